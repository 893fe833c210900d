"""Measurement events (labs, ICU vitals, outpatient OMR) of the synthetic generator.

A value is the patient's own baseline + chronic-condition shifts scaled by severity + the
acute state of the stay (generic illness direction and the problem's own signature) + noise,
on the measurement's natural scale (normal or log-normal), clipped and rounded as MIMIC reports.
"""

from __future__ import annotations

import numpy as np

from ehr_jax.synthetic import tables as T
from ehr_jax.synthetic.timeline import Stays, Subjects, severity

SEX_EFFECT = {"hgb": -0.6, "hct": -0.6, "rbc": -0.5, "creat": -0.4, "weight_kg": -0.7, "weight_lbs": -0.7, "ck": -0.3}
BODY_LABS = ("weight_kg", "weight_lbs", "bmi")
WITHIN_NOISE = 0.45  # visit-to-visit noise in sd units (body size: 0.1)
PRIO_MEASURE = 5


class Events:
    """Growing list of event columns for one block; times in days since 1970."""

    def __init__(self):
        self.parts: list[tuple] = []

    def add(self, subj, day, code, prio: int, value=None, text=None) -> None:
        n = len(subj)
        code = np.broadcast_to(np.asarray(code, np.int32), (n,))
        value = np.full(n, np.nan, np.float32) if value is None else np.asarray(value, np.float32)
        text = np.full(n, -1, np.int64) if text is None else np.asarray(text, np.int64)
        self.parts.append((np.asarray(subj, np.int32), np.asarray(day, np.float64), code,
                           value, np.full(n, prio, np.int8), text))

    def columns(self) -> tuple[np.ndarray, ...]:
        return tuple(np.concatenate([p[i] for p in self.parts]) for i in range(6))


def acuity_at(stays: Stays, stay_ix: np.ndarray, day: np.ndarray) -> np.ndarray:
    """Acute state during a stay: worsens towards death, or towards a late ICU transfer, else resolves."""
    a0, start = stays.acuity[stay_ix], stays.start[stay_ix]
    elapsed = day - start
    los = np.maximum(stays.end[stay_ix] - start, 0.05)
    to_icu = stays.icu_start[stay_ix] - start
    late_icu = stays.icu[stay_ix] & (to_icu > 0.5)
    peak_at = np.where(late_icu, to_icu, 0.0)
    peak = a0 + np.where(late_icu, 1.0, 0.0)
    rising = a0 + (peak - a0) * elapsed / np.maximum(peak_at, 0.05)
    resolving = peak * np.exp(-np.maximum(elapsed - peak_at, 0.0) / 2.0)
    survivor = np.where(elapsed < peak_at, rising, resolving)
    return np.where(stays.died[stay_ix], a0 + 1.5 * elapsed / los, survivor)


def _lab_params(arrays: dict) -> dict:
    if "_measure" not in arrays:
        ix = arrays["lab_index"]
        n_lab = len(arrays["lab_code"])
        sex = np.zeros(n_lab, np.float32)
        for k, v in SEX_EFFECT.items():
            sex[ix[k]] = v
        body = np.zeros(n_lab, np.float32)
        body[[ix[k] for k in BODY_LABS]] = 1.0
        noise = np.where(body > 0, 0.1, WITHIN_NOISE)
        is_panel = np.ones(n_lab, bool)
        is_panel[[ix[k] for k in T.ICU_VITALS + BODY_LABS]] = False
        cond_order = np.where((np.abs(arrays["cond_lab_effect"]) >= 0.8) & is_panel, 0.35, 0.0)
        type_effect = np.vstack([arrays["acute_lab_effect"], np.zeros((1, n_lab), np.float32)])
        f32 = lambda x: np.asarray(x, np.float32)
        arrays["_measure"] = dict(
            sex=sex, body=body, noise=f32(noise), cond_order=f32(cond_order), type_effect=type_effect,
            sd=f32(arrays["lab_sd"]), mean=f32(arrays["lab_mean"]), log=arrays["lab_log"].astype(bool),
            lo=f32(arrays["lab_lo"]), hi=f32(arrays["lab_hi"]), scale=f32(10.0 ** arrays["lab_dec"]))
    return arrays["_measure"]


def drug_shift(arrays: dict, first_dose_NxE: np.ndarray, stay_ix: np.ndarray, day: np.ndarray) -> np.ndarray:
    """Lab shifts (rows x labs) of the drugs a stay has started by each row's time."""
    started = (first_dose_NxE[stay_ix] <= day[:, None]).astype(np.float32)
    return started @ arrays["drug_lab_effect"]


def measure(rng, events: Events, subjects: Subjects, arrays: dict, subj, day, sev_NxK, acuity,
            acute, row, lab, extra_NxL=None) -> None:
    """Emit one event per (row, lab) pair with a value from the patient's state at that row."""
    p = _lab_params(arrays)
    s = subj[row]
    shift_NxL = sev_NxK.astype(np.float32) @ arrays["cond_lab_effect"]
    z = (subjects.lab_offset_SxL[s, lab] + shift_NxL[row, lab]
         + acuity[row].astype(np.float32) * (arrays["lab_acute_dir"][lab] + p["type_effect"][acute[row], lab])
         + rng.standard_normal(len(row), dtype=np.float32) * p["noise"][lab])
    z += p["sex"][lab] * subjects.female[s] + p["body"][lab] * subjects.body_z[s].astype(np.float32)
    if extra_NxL is not None:
        z += extra_NxL[row, lab]
    z *= p["sd"][lab]
    log = p["log"][lab]
    z[log] = np.exp(z[log])
    value = np.where(log, p["mean"][lab] * z, p["mean"][lab] + z)
    value = np.clip(value, p["lo"][lab], p["hi"][lab])
    scale = p["scale"][lab]
    events.add(s, day[row], arrays["lab_code"][lab], PRIO_MEASURE, np.round(value * scale) / scale)


def _include(rng, prob_NxL: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) pairs of independent Bernoulli draws."""
    return np.nonzero(rng.random(prob_NxL.shape, dtype=np.float32) < prob_NxL)


def inpatient_labs(rng, events: Events, subjects: Subjects, stays: Stays, arrays: dict, first_dose) -> None:
    """An admission panel, then 06:00 panels (half the days draw none), plus 12-hourly ICU panels."""
    first_6am = np.floor(stays.start - 0.25) + 1.25
    n_daily = np.where(stays.end > first_6am, np.floor(stays.end - first_6am) + 1, 0).astype(np.int64)
    n_icu = np.where(stays.icu, np.floor((stays.icu_end - stays.icu_start) / 0.5), 0).astype(np.int64)
    ix = np.arange(len(stays.subj))
    stay_ix = np.concatenate([ix, np.repeat(ix, n_daily), np.repeat(ix, n_icu)])
    k_daily = np.arange(n_daily.sum()) - np.repeat(np.cumsum(n_daily) - n_daily, n_daily)
    k_icu = np.arange(n_icu.sum()) - np.repeat(np.cumsum(n_icu) - n_icu, n_icu)
    day = np.concatenate([
        stays.start + rng.uniform(0.01, 0.08, len(ix)),
        first_6am[np.repeat(ix, n_daily)] + k_daily + rng.uniform(-0.03, 0.03, len(k_daily)),
        stays.icu_start[np.repeat(ix, n_icu)] + 0.5 * (k_icu + 1) - 0.25 + rng.uniform(-0.02, 0.02, len(k_icu)),
    ])
    day = np.minimum(day, stays.end[stay_ix] - 0.003)
    p = _lab_params(arrays)
    sev = stays.sev_NxK[stay_ix]
    acute = stays.acute[stay_ix]
    prob = (arrays["lab_order_inpatient"] + (sev > 0) @ p["cond_order"] + arrays["acute_lab_order"][acute])
    skip_day = rng.random(len(day)) < 0.5  # not every day gets labs
    skip_day[: len(ix)] = False
    prob = np.where(skip_day[:, None], 0.0, np.minimum(prob, 0.97))
    measure(rng, events, subjects, arrays, stays.subj[stay_ix], day, sev, acuity_at(stays, stay_ix, day),
            acute, *_include(rng, prob), extra_NxL=drug_shift(arrays, first_dose, stay_ix, day))


def icu_vitals(rng, events: Events, subjects: Subjects, stays: Stays, arrays: dict, first_dose) -> None:
    """Vitals charted every 2 hours from ICU admission to ICU discharge, and the admission weight."""
    ix = np.nonzero(stays.icu)[0]
    n_hours = np.maximum(np.floor((stays.icu_end[ix] - stays.icu_start[ix]) * 12), 1).astype(np.int64)
    stay_ix = np.repeat(ix, n_hours)
    k = np.arange(n_hours.sum()) - np.repeat(np.cumsum(n_hours) - n_hours, n_hours)
    day = stays.icu_start[stay_ix] + (k + rng.uniform(0.1, 0.9, len(k))) / 12
    vitals = arrays["icu_vitals"]
    prob = np.broadcast_to(arrays["icu_vital_prob"], (len(k), len(vitals))).copy()
    ix_of = {name: i for i, name in enumerate(T.ICU_VITALS)}
    prob[:, ix_of["fio2"]] = np.where(stays.vent[stay_ix], 0.6, 0.0)
    dm = stays.sev_NxK[stay_ix, [c["name"] for c in T.CONDITIONS].index("dm2")] > 0
    prob[:, ix_of["fsglu"]] += 0.3 * dm
    row, col = _include(rng, prob)
    lab = vitals[col]
    first_hour = np.flatnonzero(k == 0)
    row = np.concatenate([row, first_hour])
    lab = np.concatenate([lab, np.full(len(first_hour), arrays["lab_index"]["weight_kg"])])
    measure(rng, events, subjects, arrays, stays.subj[stay_ix], day, stays.sev_NxK[stay_ix],
            acuity_at(stays, stay_ix, day), stays.acute[stay_ix], row, lab,
            extra_NxL=drug_shift(arrays, first_dose, stay_ix, day))


def outpatient_visits(rng, events: Events, subjects: Subjects, timeline, arrays: dict) -> None:
    """Clinic visits between stays: OMR blood pressure (text), weight, BMI and a small lab panel."""
    subj, start, end = timeline.gap_subj, timeline.gap_start + 3.0, timeline.gap_end - 1.0
    ok = end > start
    subj, start, end = subj[ok], start[ok], end[ok]
    burden = severity(subjects, subj, start) @ arrays["cond_weight"]
    rate_per_day = (0.8 + 0.5 * np.clip(burden, 0, 4)) / 365.25
    n_visits = np.minimum(rng.poisson(rate_per_day * (end - start)), 40)
    gap_ix = np.repeat(np.arange(len(subj)), n_visits)
    day = start[gap_ix] + rng.random(len(gap_ix)) * (end - start)[gap_ix]
    day = np.floor(day) + rng.uniform(0.35, 0.7, len(day))  # office hours
    vsubj = subj[gap_ix]
    sev = severity(subjects, vsubj, day).astype(np.float32)
    p = _lab_params(arrays)
    prob = np.minimum(arrays["lab_order_outpatient"] + (sev > 0) @ p["cond_order"], 0.95)
    ix = arrays["lab_index"]
    prob[:, ix["weight_lbs"]] = 0.7
    prob[:, ix["bmi"]] = 0.5
    no_acute = np.full(len(day), len(T.ACUTE))
    measure(rng, events, subjects, arrays, vsubj, day, sev, np.zeros(len(day)), no_acute, *_include(rng, prob))
    _blood_pressure(rng, events, subjects, arrays, vsubj, day, sev)


def _blood_pressure(rng, events, subjects, arrays, subj, day, sev_NxK) -> None:
    """OMR blood pressure is one event whose text_value is "systolic/diastolic" (numeric null)."""
    keep = rng.random(len(day)) < 0.85
    subj, day, sev_NxK = subj[keep], day[keep], sev_NxK[keep]
    ix = arrays["lab_index"]
    values = []
    for name in ("sbp", "dbp"):
        lab = ix[name]
        z = (subjects.lab_offset_SxL[subj, lab] + sev_NxK @ arrays["cond_lab_effect"][:, lab]
             + rng.normal(0, WITHIN_NOISE, len(day)))
        values.append(np.clip(np.round(arrays["lab_mean"][lab] + arrays["lab_sd"][lab] * z), 30, 250))
    text = values[0].astype(np.int64) * 1000 + values[1].astype(np.int64)
    events.add(subj, day, arrays["blood_pressure"], PRIO_MEASURE, text=text)
