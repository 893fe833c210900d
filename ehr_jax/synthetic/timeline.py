"""Latent patients and their hospital-stay skeletons (no codes yet), vectorised over a block.

Layers, top to bottom: latent factors per patient -> chronic conditions with onset ages (and
disease-to-disease links that pull later onsets forward) -> severities that grow with years
since onset -> a chronic burden that sets how often the patient is admitted, how sick each stay
is, whether it needs the ICU, how long it lasts and whether the patient dies -> a readmission
and post-discharge death process that depends on the burden and recent utilisation. The only
Python loop runs over the k-th admission of every patient at once.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ehr_jax.synthetic import tables as T

DAYS_PER_YEAR = 365.25
EPOCH_YEAR = 1970
MAX_ADMISSIONS = 80  # per patient: a cap on the admission loop, rarely reached
_COND = {c["name"]: k for k, c in enumerate(T.CONDITIONS)}
_ACUTE = {a["name"]: i for i, a in enumerate(T.ACUTE)}


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _categorical(rng, logits_NxC: np.ndarray) -> np.ndarray:
    """One Gumbel-max draw per row."""
    return np.argmax(logits_NxC + rng.gumbel(size=logits_NxC.shape), axis=1)


@dataclasses.dataclass
class Subjects:
    """Per-patient latent state for one block (arrays of length S, times in days since 1970)."""

    female: np.ndarray
    race: np.ndarray
    marital: np.ndarray
    factors_SxF: np.ndarray
    frailty: np.ndarray
    birth: np.ndarray
    window_start: np.ndarray
    window_end: np.ndarray
    icd10_switch: np.ndarray
    onset_SxK: np.ndarray  # age in years at onset; inf when the patient never has it
    rate_SxK: np.ndarray  # severity growth per year since onset
    lab_offset_SxL: np.ndarray  # the patient's own baseline for each measurement (sd units)
    body_z: np.ndarray  # body size (weight/BMI) offset
    # Hidden per-patient tendencies, visible only through past stays (long-range signal):
    icu_prop: np.ndarray  # goes to the ICU more often than the acute state alone implies
    los_prop: np.ndarray  # slow recovery: longer stays
    readmit_prop: np.ndarray  # non-adherence / social risk: early readmission, against-advice discharge


def severity(subjects: Subjects, idx: np.ndarray, day: np.ndarray) -> np.ndarray:
    """Chronic severity in [0, 1) of each condition for patients idx at times day (N x K)."""
    age = (day - subjects.birth[idx]) / DAYS_PER_YEAR
    years = age[:, None] - subjects.onset_SxK[idx]
    return np.where(years > 0, 1.0 - np.exp(-subjects.rate_SxK[idx] * np.maximum(years, 0)), 0.0)


def sample_subjects(rng: np.random.Generator, n: int, arrays: dict) -> Subjects:
    """Draw latent patients: demographics, factors, condition onsets and progression rates."""
    factors = rng.normal(size=(n, T.N_FACTORS))
    start_year = rng.uniform(2110, 2190, n)
    window_start = (start_year - EPOCH_YEAR) * DAYS_PER_YEAR
    window_years = rng.uniform(7, 12, n)
    age0 = 18 + 72 * rng.beta(2.2, 2.0, n)
    age_end = age0 + window_years
    liability = (arrays["cond_intercept"] + factors @ arrays["cond_loadings"].T
                 + arrays["cond_age_coef"] * (age_end[:, None] - 60) / 10
                 + rng.normal(size=(n, len(T.CONDITIONS))))
    onset = arrays["cond_onset"] + rng.normal(0, 9, liability.shape) - 4 * liability
    onset = np.where(liability > 0, np.maximum(onset, 18 + rng.uniform(0, 5, liability.shape)), np.inf)
    for cause, effect, p, delay in arrays["cond_links"]:
        cause, effect = int(cause), int(effect)
        hit = np.isfinite(onset[:, cause]) & (rng.random(n) < p)
        pulled = onset[:, cause] + rng.exponential(delay, n)
        onset[:, effect] = np.where(hit, np.minimum(onset[:, effect], pulled), onset[:, effect])
    load = factors @ arrays["cond_loadings"].T / np.linalg.norm(arrays["cond_loadings"], axis=1)
    rate = np.exp(rng.normal(-2.1, 0.6, liability.shape) + 0.25 * load)
    return Subjects(
        female=rng.random(n) < 0.52,
        race=rng.choice(len(arrays["race_p"]), n, p=arrays["race_p"]),
        marital=rng.choice(len(arrays["marital_p"]), n, p=arrays["marital_p"]),
        factors_SxF=factors, frailty=rng.normal(0, 0.45, n),
        birth=window_start - age0 * DAYS_PER_YEAR, window_start=window_start,
        window_end=window_start + window_years * DAYS_PER_YEAR,
        icd10_switch=window_start + rng.uniform(-4, 9, n) * DAYS_PER_YEAR,
        onset_SxK=onset, rate_SxK=rate,
        lab_offset_SxL=rng.normal(0, 0.35, (n, len(arrays["lab_code"]))).astype(np.float32),
        body_z=rng.normal(0, 1, n), icu_prop=rng.normal(0, 0.8, n), los_prop=rng.normal(0, 0.35, n),
        readmit_prop=rng.normal(0, 1.0, n),
    )


@dataclasses.dataclass
class Stays:
    """Hospital stays of a block, one entry per stay (days since 1970)."""

    subj: np.ndarray
    start: np.ndarray
    end: np.ndarray
    acute: np.ndarray
    acuity: np.ndarray  # acute severity at admission
    icu: np.ndarray
    icu_start: np.ndarray
    icu_end: np.ndarray
    unit: np.ndarray
    vent: np.ndarray
    died: np.ndarray
    discharge: np.ndarray  # index into DISCHARGE_LOCATIONS
    admission_code: np.ndarray
    icd9: np.ndarray
    sev_NxK: np.ndarray
    burden: np.ndarray
    age: np.ndarray


@dataclasses.dataclass
class Timeline:
    stays: Stays
    death: np.ndarray  # per subject: day of death (in or out of hospital), nan if alive
    gap_subj: np.ndarray  # out-of-hospital intervals (for outpatient visits)
    gap_start: np.ndarray
    gap_end: np.ndarray


def _admission_code(rng, acute, arrays):
    n = len(acute)
    elective = arrays["acute_elective"][acute]
    em = arrays["adm_emergency"][rng.choice(len(arrays["adm_em_type_p"]), n, p=arrays["adm_em_type_p"]),
                                 rng.choice(len(arrays["adm_em_loc_p"]), n, p=arrays["adm_em_loc_p"])]
    el = arrays["adm_elective"][rng.choice(len(arrays["adm_el_type_p"]), n, p=arrays["adm_el_type_p"]),
                                rng.choice(len(arrays["adm_el_loc_p"]), n, p=arrays["adm_el_loc_p"])]
    return np.where(elective, el, em)


def _discharge_location(rng, age_term, burden, sev, acute, los, icu, died, readmit_prop):
    cond = lambda name: sev[:, _COND[name]]
    is_acute = lambda name: (acute == _ACUTE[name]).astype(float)
    logits = np.stack([
        np.full(len(acute), 1.6),  # HOME
        0.2 + 0.35 * age_term + 0.3 * burden,  # HOME HEALTH CARE
        -1.3 + 0.6 * age_term + 0.35 * burden + 0.5 * (los > 7) + 1.5 * cond("dementia") + 1.5 * is_acute("hipfx"),
        -2.2 + 0.3 * age_term + 2.0 * (is_acute("hipfx") + is_acute("stroke") + is_acute("joint_repl")),
        -5.0 + 0.9 * burden + 3.0 * cond("cancer") + 1.5 * cond("dementia"),  # HOSPICE
        -4.5 + 1.2 * icu + 0.4 * (los > 14),  # LTAC
        -4.8 + 2.5 * (cond("aud") + cond("oud")) + readmit_prop,  # AGAINST ADVICE
        -8.0 + 7.0 * is_acute("psych"),  # PSYCH FACILITY
    ], axis=1)
    return np.where(died, len(T.DISCHARGE_LOCATIONS) - 1, _categorical(rng, logits))


def _one_stay(rng, subjects: Subjects, idx, start, recent, arrays) -> dict:
    """The k-th stay of the patients idx starting at start: problem, ICU, length, death."""
    n = len(idx)
    sev = severity(subjects, idx, start)
    age = (start - subjects.birth[idx]) / DAYS_PER_YEAR
    age_term = (age - 65) / 10
    frail = subjects.frailty[idx]
    burden = sev @ arrays["cond_weight"] + 0.12 * age_term + frail
    acute = _categorical(rng, arrays["acute_base"] + sev @ arrays["acute_cond"].T)
    acuity = arrays["acute_sev"][acute] + 0.3 * burden + rng.normal(0, 0.6, n)
    icu = rng.random(n) < _sigmoid(-2.2 + arrays["acute_icu"][acute] + 1.1 * (acuity - 0.6) + 0.3 * burden
                                   + subjects.icu_prop[idx])
    log_los = (np.log(0.62 * arrays["acute_los"][acute]) + 0.22 * (acuity - arrays["acute_sev"][acute])
               + 0.55 * icu + 0.15 * burden + 0.08 * age_term + subjects.los_prop[idx] + rng.normal(0, 0.5, n))
    los = np.clip(np.exp(log_los) - 0.3, 0.15, 120.0)
    sev_of = lambda name: sev[:, _COND[name]]
    death_logit = (-5.85 + 0.8 * acuity + 0.5 * burden + 0.3 * age_term + 0.9 * icu
                   + 1.6 * sev_of("cancer") + 1.0 * sev_of("cirrh") + 0.8 * sev_of("heme")
                   + 0.6 * sev_of("dementia") + 0.25 * np.log1p(recent))
    died = rng.random(n) < _sigmoid(death_logit)
    los = np.where(died, los * rng.uniform(0.15, 1.0, n) + 0.05, los)
    # 60% of ICU stays start from the ED within hours; the rest after ward deterioration.
    late = rng.random(n) < 0.4
    icu_offset = np.where(late, rng.uniform(1.0, np.maximum(1.05, 0.6 * los)),
                          np.minimum(rng.exponential(0.2, n), 0.4 * los))
    icu_len = np.exp(np.log(1.8) + 0.35 * (acuity - 0.6) + rng.normal(0, 0.6, n))
    icu_len = np.clip(icu_len, 0.4, None)
    los = np.where(icu, np.maximum(los, icu_offset + icu_len + np.where(died, 0.0, 0.3)), los)
    end = start + los
    icu_start = start + icu_offset
    icu_end = np.where(died, end, np.minimum(icu_start + icu_len, end - 0.1))
    unit_pick = rng.random(n)
    unit = np.where(unit_pick < 0.2, T.MSICU, np.where(unit_pick < 0.28, T.MICU, arrays["acute_unit"][acute]))
    vent = icu & (rng.random(n) < _sigmoid(-1.2 + 1.2 * (acuity - 1.0)))
    discharge = _discharge_location(rng, age_term, burden, sev, acute, los, icu, died, subjects.readmit_prop[idx])
    return dict(subj=idx, start=start, end=end, acute=acute, acuity=acuity, icu=icu, icu_start=icu_start,
                icu_end=icu_end, unit=unit, vent=vent, died=died, discharge=discharge,
                admission_code=_admission_code(rng, acute, arrays),
                icd9=start < subjects.icd10_switch[idx], sev_NxK=sev.astype(np.float32),
                burden=burden, age=age)


def _next_admission(rng, stay: dict, recent, frail, readmit_prop):
    """Gap to the next stay (readmission clusters) and time of an out-of-hospital death."""
    n = len(stay["subj"])
    burden, los = stay["burden"], stay["end"] - stay["start"]
    hospice = stay["discharge"] == T.DISCHARGE_LOCATIONS.index("HOSPICE")
    snf = stay["discharge"] == T.DISCHARGE_LOCATIONS.index("SKILLED NURSING FACILITY")
    against_advice = stay["discharge"] == T.DISCHARGE_LOCATIONS.index("AGAINST ADVICE")
    early = rng.random(n) < _sigmoid(-3.3 + 0.5 * burden + 0.5 * np.log1p(recent) + 0.35 * (los > 7)
                                     + 0.3 * stay["icu"] + 0.3 * snf + 0.8 * against_advice + 0.3 * frail
                                     + readmit_prop)
    long_gap = rng.exponential(2600.0 * np.exp(-0.4 * burden - 0.2 * frail), n)
    gap = np.where(early, 1.0 + rng.exponential(11.0, n), 20.0 + long_gap)
    hazard_per_year = 0.004 * np.exp(0.6 * burden + 0.25 * (stay["age"] - 65) / 10) + 4.0 * hospice
    death_after = rng.exponential(DAYS_PER_YEAR / hazard_per_year)
    return stay["end"] + gap, stay["end"] + death_after


def simulate(rng: np.random.Generator, subjects: Subjects, arrays: dict) -> Timeline:
    """Run the admission process for every patient of the block; see the module docstring."""
    n = len(subjects.birth)
    everyone = np.arange(n)
    burden0 = severity(subjects, everyone, subjects.window_start) @ arrays["cond_weight"] + subjects.frailty
    window = subjects.window_end - subjects.window_start
    first = rng.exponential(900.0 * np.exp(-0.35 * burden0))
    first = np.where(first < window, first, rng.uniform(0, 0.9, n) * window)
    start, recent, last_end = subjects.window_start + first, np.zeros(n), np.full(n, np.nan)
    death = np.full(n, np.nan)
    gaps = [(everyone, subjects.window_start, start.copy())]  # start is updated in place below
    stays: list[dict] = []
    active = np.ones(n, bool)
    for _ in range(MAX_ADMISSIONS):
        idx = np.nonzero(active)[0]
        if len(idx) == 0:
            break
        since = np.where(np.isnan(last_end[idx]), np.inf, start[idx] - last_end[idx])
        recent[idx] = recent[idx] * np.exp(-since / 180.0)
        stay = _one_stay(rng, subjects, idx, start[idx], recent[idx], arrays)
        stays.append(stay)
        recent[idx] += 1.0
        last_end[idx] = stay["end"]
        next_start, death_day = _next_admission(rng, stay, recent[idx], subjects.frailty[idx],
                                                subjects.readmit_prop[idx])
        died_out = ~stay["died"] & (death_day < next_start) & (death_day < subjects.window_end[idx])
        death[idx] = np.where(stay["died"], stay["end"], np.where(died_out, death_day, np.nan))
        gap_end = np.where(died_out, death_day, np.minimum(next_start, subjects.window_end[idx]))
        keep = ~stay["died"]
        gaps.append((idx[keep], stay["end"][keep], gap_end[keep]))
        start[idx] = next_start
        active[idx] = ~stay["died"] & ~died_out & (next_start < subjects.window_end[idx])
    merged = Stays(**{f.name: np.concatenate([s[f.name] for s in stays]) for f in dataclasses.fields(Stays)})
    return Timeline(stays=merged, death=death,
                    gap_subj=np.concatenate([g[0] for g in gaps]),
                    gap_start=np.concatenate([g[1] for g in gaps]),
                    gap_end=np.concatenate([g[2] for g in gaps]))
