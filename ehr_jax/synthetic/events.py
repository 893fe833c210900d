"""Coded events of a block: demographics, admissions, ICU transfers, diagnoses, procedures, drugs.

Diagnoses are timed at discharge (as in the MIMIC-IV MEDS ETL); a chronic condition's ICD code
encodes its current severity (e.g. CKD stage); every patient carries a few personal rare codes
that recur across stays, and stays add rare codes drawn from pools tied to the patient's
conditions, so the code distribution is heavy-tailed yet predictable from history.
"""

from __future__ import annotations

import numpy as np

from ehr_jax.synthetic import tables as T
from ehr_jax.synthetic.measure import PRIO_MEASURE, Events
from ehr_jax.synthetic.timeline import Stays, Subjects, Timeline

# Order of rows that share a minute (PRIO_MEASURE = 5 sits between ICU admission and discharge).
PRIO_STATIC, PRIO_BIRTH, PRIO_ADMIT, PRIO_ADMIT_INFO, PRIO_ICU_IN = 0, 1, 2, 3, 4
PRIO_ICU_OUT, PRIO_DISCHARGE_CODES, PRIO_DISCHARGE, PRIO_DEATH = 6, 7, 8, 9
N_PERSONAL_CODES = 5
_K = len(T.CONDITIONS)


def _pool_concepts(rng, arrays, sev_NxK: np.ndarray, n_draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rare diagnosis concepts: 60% from a pool tied to one of the row's conditions, else general."""
    row = np.repeat(np.arange(len(n_draws)), n_draws)
    weights = np.log(sev_NxK[row] + 1e-9) + rng.gumbel(size=(len(row), _K))
    group = np.argmax(weights, axis=1)
    has = sev_NxK[row, group] > 0
    group = np.where(has & (rng.random(len(row)) < 0.6), group, _K)
    rank = np.searchsorted(arrays["dx_pool_cdf"], rng.random(len(row)))
    return row, rank * (_K + 1) + group


def _dx_code(arrays, concept: np.ndarray, icd9: np.ndarray) -> np.ndarray:
    pool9 = arrays["pool_dx9"]
    return np.where(icd9, pool9[concept % len(pool9)], arrays["pool_dx10"][concept])


def personal_codes(rng, subjects: Subjects, arrays: dict) -> np.ndarray:
    """Rare concepts that stick to a patient (S x N_PERSONAL_CODES), tied to their conditions."""
    n = len(subjects.birth)
    present = np.isfinite(subjects.onset_SxK).astype(np.float64) * 0.5
    _, concept = _pool_concepts(rng, arrays, present, np.full(n, N_PERSONAL_CODES))
    return concept.reshape(n, N_PERSONAL_CODES)


def static_and_admin(rng, events: Events, subjects: Subjects, timeline: Timeline, arrays: dict, code_id: dict) -> None:
    """Static rows, birth, admission/discharge/ICU/death rows, marital status and insurance."""
    n = len(subjects.birth)
    everyone = np.arange(n)
    nan = np.full(n, np.nan)
    events.add(everyone, nan, np.where(subjects.female, code_id["GENDER//F"], code_id["GENDER//M"]), PRIO_STATIC)
    events.add(everyone, nan, arrays["races"][subjects.race], PRIO_STATIC)
    events.add(everyone, subjects.birth, code_id["MEDS_BIRTH"], PRIO_BIRTH)
    st = timeline.stays
    events.add(st.subj, st.start, st.admission_code, PRIO_ADMIT)
    events.add(st.subj, st.start, arrays["marital"][subjects.marital[st.subj]], PRIO_ADMIT_INFO)
    insurance = np.where(st.age >= 65, 0, rng.choice([1, 2, 3], len(st.subj), p=[0.3, 0.6, 0.1]))
    events.add(st.subj, st.start, arrays["insurance"][insurance], PRIO_ADMIT_INFO)
    icu = np.nonzero(st.icu)[0]
    events.add(st.subj[icu], st.icu_start[icu], arrays["icu_in"][st.unit[icu]], PRIO_ICU_IN)
    events.add(st.subj[icu], st.icu_end[icu], arrays["icu_out"][st.unit[icu]], PRIO_ICU_OUT)
    events.add(st.subj, st.end, arrays["discharge"][st.discharge], PRIO_DISCHARGE)
    dead = np.nonzero(np.isfinite(timeline.death))[0]
    events.add(dead, timeline.death[dead], code_id["MEDS_DEATH"], PRIO_DEATH)


def diagnoses(rng, events: Events, stays: Stays, personal: np.ndarray, arrays: dict) -> None:
    """ICD codes and the DRG of every stay, timed at discharge."""
    n = len(stays.subj)
    ix = np.arange(n)
    n_sec = arrays["acute_dx10"].shape[1]
    take = np.concatenate([np.ones((n, 1), bool), rng.random((n, n_sec - 1)) < 0.4], axis=1)
    table = np.where(stays.icd9[:, None], arrays["acute_dx9"][stays.acute], arrays["acute_dx10"][stays.acute])
    row, col = np.nonzero(take)
    codes = [table[row, col]]
    rows = [row]
    sev = stays.sev_NxK
    row, k = np.nonzero((sev > 0) & (rng.random(sev.shape) < 0.45 + 0.5 * sev))
    level_sev = np.clip(sev[row, k] + rng.normal(0, 0.08, len(row)), 0, 0.999)
    icd9 = stays.icd9[row]
    length = np.where(icd9, arrays["cond_len9"][k], arrays["cond_len10"][k])
    level = (level_sev * length).astype(np.int64)
    codes.append(np.where(icd9, arrays["cond_dx9"][k, np.minimum(level, arrays["cond_dx9"].shape[1] - 1)],
                          arrays["cond_dx10"][k, level]))
    rows.append(row)
    row, j = np.nonzero(rng.random((n, N_PERSONAL_CODES)) < 0.35)
    codes.append(_dx_code(arrays, personal[stays.subj[row], j], stays.icd9[row]))
    rows.append(row)
    n_noise = rng.poisson(np.clip(1.5 + 1.2 * stays.burden, 0.5, 8))
    row, concept = _pool_concepts(rng, arrays, sev, n_noise)
    codes.append(_dx_code(arrays, concept, stays.icd9[row]))
    rows.append(row)
    codes.append(arrays["acute_drg"][stays.acute, (stays.acuity < 1.0).astype(np.int64)])
    rows.append(ix)
    # A stay lists each ICD code once, as in MIMIC's diagnoses_icd.
    row, code = np.divmod(np.unique(np.concatenate(rows).astype(np.int64) << 20 | np.concatenate(codes)), 1 << 20)
    events.add(stays.subj[row], stays.end[row], code, PRIO_DISCHARGE_CODES)


def procedures(rng, events: Events, stays: Stays, arrays: dict) -> None:
    """Problem-specific procedures, ICU procedures (ventilation by duration, lines, dialysis), rare ones."""
    n = len(stays.subj)
    proc = arrays["acute_proc"]
    hit = (stays.acute[:, None] == proc[None, :, 0]) & (rng.random((n, len(proc))) < proc[None, :, 3])
    row, p = np.nonzero(hit)
    codes = [np.where(stays.icd9[row], proc[p, 2], proc[p, 1]).astype(np.int64)]
    rows = [row]
    icu_procs = arrays["icu_procs"]
    vent_days = stays.icu_end - stays.icu_start
    vent_kind = np.where(vent_days < 1, "vent_short", np.where(vent_days < 4, "vent_mid", "vent_long"))
    for kind in ("vent_short", "vent_mid", "vent_long"):
        row = np.nonzero(stays.vent & (vent_kind == kind))[0]
        codes.append(np.where(stays.icd9[row], icu_procs[kind][1], icu_procs[kind][0]))
        rows.append(row)
    ckd = stays.sev_NxK[:, [c["name"] for c in T.CONDITIONS].index("ckd")]
    for kind, want in (("central_line", stays.icu & (rng.random(n) < 0.45)),
                       ("dialysis", (ckd > 0.75) & (rng.random(n) < 0.4))):
        row = np.nonzero(want)[0]
        codes.append(np.where(stays.icd9[row], icu_procs[kind][1], icu_procs[kind][0]))
        rows.append(row)
    n_rare = rng.poisson(0.25 + 0.5 * stays.icu)
    row = np.repeat(np.arange(n), n_rare)
    rank = np.searchsorted(arrays["px_pool_cdf"], rng.random(len(row)))
    px9 = arrays["pool_px9"]
    codes.append(np.where(stays.icd9[row], px9[rank % len(px9)], arrays["pool_px10"][rank]))
    rows.append(row)
    row = np.concatenate(rows)
    los = stays.end[row] - stays.start[row]
    day = stays.start[row] + rng.uniform(0.05, 0.6, len(row)) * los
    events.add(stays.subj[row], day, np.concatenate(codes), PRIO_MEASURE)


def medications(rng, events: Events, stays: Stays, arrays: dict) -> np.ndarray:
    """eMAR administrations: drugs chosen by chronic conditions, the acute problem and habit.

    Returns the first-dose day of each lab-moving drug per stay (n_stays x E, inf if not given).
    """
    n = len(stays.subj)
    prob = (arrays["drug_base"] + (stays.sev_NxK > 0) @ arrays["drug_by_cond"]
            + arrays["drug_by_acute"][stays.acute])
    take = rng.random(prob.shape) < np.minimum(prob, 0.95)
    row, drug = np.nonzero(take)
    n_rare = rng.poisson(0.6 + 0.3 * stays.burden.clip(0, 5))
    rare_row = np.repeat(np.arange(n), n_rare)
    rare = arrays["rare_drugs"][np.searchsorted(arrays["rare_drug_cdf"], rng.random(len(rare_row)))]
    row, drug = np.concatenate([row, rare_row]), np.concatenate([drug, rare])
    los = stays.end[row] - stays.start[row]
    first = stays.start[row] + rng.uniform(0.02, 0.3, len(row)) * los
    stop = np.where(rng.random(len(row)) < 0.5, stays.end[row],
                    first + rng.uniform(0.2, 1.0, len(row)) * (stays.end[row] - first))
    freq = arrays["drug_freq"][drug]
    n_doses = np.clip(np.floor((stop - first) * freq).astype(np.int64) + 1, 1, 10)
    pair = np.repeat(np.arange(len(row)), n_doses)
    k = np.arange(n_doses.sum()) - np.repeat(np.cumsum(n_doses) - n_doses, n_doses)
    day = first[pair] + k / freq[pair] + rng.uniform(-0.01, 0.01, len(pair))
    day = np.clip(day, stays.start[row[pair]] + 0.001, stays.end[row[pair]] - 0.002)
    events.add(stays.subj[row[pair]], day, arrays["drug_code"][drug[pair]], PRIO_MEASURE)
    slot = arrays["drug_effect_slot"][drug]
    first_dose = np.full((n, len(arrays["drug_lab_effect"])), np.inf)
    has = slot >= 0
    np.minimum.at(first_dose, (row[has], slot[has]), first[has])
    return first_dose
