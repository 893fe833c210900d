"""Vocabulary padding (config.model.vocab_multiple): shapes tile, padded ids are never predicted
and never counted in the study's N."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ehr_jax.errors import ConfigError
from ehr_jax.evaluation import runner, zero_shot
from ehr_jax.model import sizes, transformer
from ehr_jax.train import trainer

import train_fixtures

REAL_VOCAB = 13


def test_pad_vocab_rounds_up_and_auto_keeps_cpu_vocabularies():
    assert transformer.pad_vocab(300, 128) == 384
    assert transformer.pad_vocab(256, 128) == 256
    assert transformer.pad_vocab(300, 1) == 300
    assert jax.default_backend() == "cpu" and transformer.pad_vocab(300, 0) == 300
    with pytest.raises(ConfigError, match="config.model.vocab_multiple=-8"):
        transformer.pad_vocab(300, -8)


@pytest.mark.parametrize("tie", [False, True])
def test_padded_rows_are_parameters_but_not_the_studys_n(tie):
    cfg = transformer.model_config({"size": "d32-l1", "vocab_multiple": 8, "tie_embeddings": tie},
                                   REAL_VOCAB, 8)
    assert (cfg.vocab_size, cfg.vocab_rows) == (REAL_VOCAB, 16)
    model = nnx.eval_shape(lambda: transformer.Transformer(cfg, rngs=nnx.Rngs(0)))
    tree = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    size = sizes.get_size("d32-l1")
    assert tree == sizes.n_params(size, 16, tie_embeddings=tie)[0]
    config = train_fixtures.base_config()
    config.model.size, config.model.tie_embeddings = "d32-l1", tie
    plan = trainer.make_plan(config, cfg)
    assert (plan.n_params, plan.n_params_non_embedding) == sizes.n_params(
        size, REAL_VOCAB, tie_embeddings=tie)
    assert plan.flops_per_token == sizes.flops_per_token(size, REAL_VOCAB, cfg.seq_len)


def test_padded_ids_get_no_probability_and_are_never_sampled():
    cfg = transformer.model_config({"size": "d32-l1", "vocab_multiple": 8}, REAL_VOCAB, 8)
    model = transformer.Transformer(cfg, rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, REAL_VOCAB, (4, 8)), jnp.int32)
    logits = model(tokens)
    assert logits.shape == (4, 8, 16)
    assert np.all(np.asarray(logits[..., REAL_VOCAB:]) == transformer.PADDED_LOGIT)
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    assert np.all(probs[..., REAL_VOCAB:] == 0.0)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    # The same weights without the padded columns give the same real-token distribution.
    unpadded = np.asarray(jax.nn.softmax(logits[..., :REAL_VOCAB], axis=-1))
    np.testing.assert_allclose(probs[..., :REAL_VOCAB], unpadded, rtol=1e-6)
    last = jnp.repeat(logits[:, -1], 500, axis=0)  # 2000 draws
    drawn = np.asarray(zero_shot.sample_tokens(jax.random.key(0), last / 0.5))
    assert drawn.max() < REAL_VOCAB and len(set(drawn.tolist())) > 3


@pytest.mark.slow
def test_a_padded_run_trains_and_evaluation_restores_its_padding(prepared_dir, tmp_path):
    """Trained with padding to 32 rows; restored by evaluation with vocab_multiple auto (1 on
    CPU): the checkpoint's own embedding rows win, so runs move between backends."""
    config = train_fixtures.tiny_config(prepared_dir, steps=2)
    config.model.vocab_multiple = 32
    summary = trainer.run(config, str(tmp_path), config.data.prepared_dir)
    vocab = len(train_fixtures.VOCAB)
    assert (summary["vocab_size"], summary["vocab_rows"]) == (vocab, 32)
    assert summary["n_params"] == sizes.n_params(sizes.get_size("d32-l1"), vocab)[0]
    assert np.isfinite(summary["val_loss"])
    config.model.vocab_multiple = 0
    model = runner.restore_model(str(tmp_path), config, vocab)
    assert (model.cfg.vocab_size, model.cfg.vocab_rows) == (vocab, 32)
