"""Base config: one training run on built-in synthetic data. Presets start from this file.

  python -m ehr_jax.main --config=configs/base.py --workdir=runs/base

Durations: set exactly one of train.steps, train.tokens or train.flops (ehr_jax.train.optim
turns it into steps). Every other preset changes a few fields of this one. A sweep preset adds
config.grid = ehr_jax.sweep.grid.default_grid() (its keys are commented there). The code reads
every key directly, so each key a user may set is here.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0  # parameter init and data order

    config.data = ml_collections.ConfigDict()
    config.data.meds_dir = ""  # MEDS dataset root; "" generates synthetic data into <workdir>/meds
    config.data.prepared_dir = ""  # tokenized shards; "" means <workdir>/prepared (built if missing)
    config.data.synthetic_subjects = 2000  # patients the synthetic generator writes when meds_dir is ""
    config.data.synthetic_seed = 0  # seed of the synthetic generator
    config.data.seq_len = 256  # tokens per training window (windows never span two patients)
    # sequence packing: fill each row with several patients' windows (segment ids keep attention
    # and RoPE positions per patient); False: one window per row, the rest padding
    config.data.pack = False
    config.data.num_workers = 0  # Grain worker processes (0: read in the training process)
    config.data.min_code_count = 10  # codes seen fewer times in train become the unknown token
    config.data.num_quantiles = 10  # value bins per numeric code (deciles), fitted on train
    config.data.max_text_values = 8  # codes with at most this many text values in train get TXT// tokens (0: off)
    config.data.prepare_wait_s = 21600.0  # multi-process jobs: how long the others wait for process 0's prepare
    config.data.records_per_shard = 2000  # patients per ArrayRecord shard

    config.model = ml_collections.ConfigDict()
    config.model.size = "d64-l2"  # a name from ehr_jax.model.sizes.LADDER
    config.model.dtype = "auto"  # compute dtype: auto (bfloat16 on GPU/TPU, float32 on CPU), float32, bfloat16
    config.model.n_kv_heads = 0  # grouped-query attention: KV heads (0: one per query head)
    config.model.tie_embeddings = False  # share the input embedding with the output head
    config.model.vocab_multiple = 0  # pad embedding/head rows to a multiple (0: auto, 128 on GPU/TPU, 1 on CPU)
    config.model.remat = False  # rematerialise each block in the backward pass (saves memory)
    # auto: splash on TPU, cudnn on GPU or triton when packed, xla on CPU; also xla (reference,
    # builds L x L), chunked (pure-JAX flash: any backend), cudnn, triton, splash
    config.model.attention = "auto"  # attention kernel (the choices above)
    config.model.scan_layers = "auto"  # nnx.scan over stacked blocks: auto (on for GPU/TPU, off on CPU), on, off

    config.train = ml_collections.ConfigDict()
    config.train.global_batch_size = 16  # windows per step, across all processes
    config.train.steps = 200  # run length in steps (0: derive from tokens or flops)
    config.train.tokens = 0  # run length as a token budget (0: unused)
    config.train.flops = 0.0  # run length as a training-FLOP budget, our FLOP count (0: unused)
    config.train.lr = 0.0  # peak learning rate (0: the width rule in ehr_jax.train.optim)
    config.train.schedule = "cosine"  # cosine, or wsd: warmup-stable-decay (sweeps branch cooldowns)
    config.train.warmup_frac = 0.05  # fraction of steps with linear warmup
    config.train.warmup_steps = 0  # warmup length in steps (0: warmup_frac of the steps)
    config.train.min_lr_ratio = 0.1  # the rate decays to this fraction of the peak at the last step
    config.train.cooldown_frac = 0.2  # wsd: the last fraction of steps cools down to the floor
    config.train.cooldown_shape = "linear"  # wsd: linear or 1-sqrt (Hägele et al. 2024)
    config.train.branch_from = ""  # run dir whose checkpoint at branch_step starts this run
    config.train.branch_step = 0  # with branch_from: the step to start from (a wsd cooldown start)
    config.train.keep_steps = ()  # checkpoint steps kept whatever keep_checkpoints says
    config.train.weight_decay = 0.1  # AdamW decoupled weight decay
    config.train.b2 = 0.95  # AdamW second-moment decay
    config.train.grad_clip = 1.0  # global gradient-norm clip
    config.train.log_every = 20  # steps between progress lines and TensorBoard points
    config.train.eval_every = 100  # steps between validation losses (0: only at the end)
    config.train.eval_tokens = 32768  # tuning-split tokens per validation loss (fixed windows)
    config.train.checkpoint_every = 100  # steps between Orbax checkpoints
    config.train.keep_checkpoints = 2  # checkpoints kept on disk
    # Memory pre-flight: compile the step first and check it fits one device. auto: if not, pick
    # remat and/or accumulation; check: stop naming what would fit; off: no pre-flight.
    config.train.memory_fit = "auto"  # auto, check or off (ehr_jax/train/memory.py)
    config.train.grad_accum_steps = 0  # micro-batches per step, same global batch and loss (0: auto)
    config.train.device_memory_gib = 0.0  # one device's memory for the pre-flight (0: ask it; CPU has none)
    config.train.profile_steps = (0, 0)  # (first step, count) traced by jax.profiler into <run>/profile; (0, 0): off

    config.mesh = ml_collections.ConfigDict()
    config.mesh.shape = (-1, 1, 1)  # devices along (data, fsdp, tensor); one -1 takes the rest

    config.eval = ml_collections.ConfigDict()
    config.eval.enabled = False  # run clinical evaluation after training
    config.eval.tasks = ("mortality", "icu_admission", "long_stay", "readmission_30d")  # built-in tasks
    config.eval.labels_dir = ""  # user label parquet root (TASK_ROOT/<task>/**.parquet); "" uses built-in tasks
    config.eval.task_rules = ()  # user task -> outcome rule for zero-shot/next-token, e.g.
    # (("inhospital_mortality", "mortality"),) or (("death_30d", "MEDS_DEATH", "", 30),)
    config.eval.name = ""  # results go to evaluation/<name>/ and summary["evaluation"][name];
    # "" means "builtin" for the built-in tasks, else the labels_dir's folder name
    config.eval.prompt_len = 0  # history tokens before each rollout (0: data.seq_len, also the cap)
    config.eval.num_rollouts = 20  # sampled futures per case (ETHOS zero-shot)
    config.eval.max_cases = 500  # held-out cases scored per task (0: all)
    config.eval.max_train_cases = 0  # train cases the probe is fitted on per task (0: all)
    config.eval.max_new_tokens = 2048  # upper bound of the rollout token caps, which follow from
    # each task's horizon (or a long stay) x the data's tokens per day; capped rollouts are censored
    config.eval.probe = True  # also fit a linear probe on the representation at prediction time
    config.eval.bootstrap = 1000  # bootstrap resamples (by subject) for 95% CIs
    config.eval.write_trajectories = False  # also write each task's rollouts as a MEDS dataset
    return config
