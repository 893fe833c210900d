"""Code vocabulary and dense parameter arrays of the synthetic generator.

Built once from ehr_jax.synthetic.tables plus seed-independent pools of rare codes, so a
code's id (and the code list written to codes.parquet) never depends on the data seed.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from ehr_jax.synthetic import tables as T

N_DX_POOL10, N_DX_POOL9, N_PX_POOL10, N_PX_POOL9 = 2800, 900, 450, 150
POOL_SEED = 20260101  # fixed: the rare-code pools are part of the generator, not of a dataset
ICU_PROCS = {  # ICD-10-PCS, ICD-9 procedure
    "vent_short": ("5A1935Z", "9670"), "vent_mid": ("5A1945Z", "9671"), "vent_long": ("5A1955Z", "9672"),
    "central_line": ("02HV33Z", "3893"), "art_line": ("02HV33Z", "3891"), "dialysis": ("5A1D70Z", "3995"),
}


class _CodeBook:
    """Append-only code list with descriptions and parent codes."""

    def __init__(self):
        self.codes: list[str] = []
        self.descriptions: list[str] = []
        self.parents: list[list[str] | None] = []
        self.index: dict[str, int] = {}

    def add(self, code: str, description: str, parents: list[str] | None = None) -> int:
        if code not in self.index:
            self.index[code] = len(self.codes)
            self.codes.append(code)
            self.descriptions.append(description)
            self.parents.append(parents)
        return self.index[code]


def _icd_parent(version: str, code: str, kind: str) -> list[str]:
    vocab = {("10", "dx"): "ICD10CM", ("9", "dx"): "ICD9CM", ("10", "px"): "ICD10PCS", ("9", "px"): "ICD9Proc"}
    dotted = code if kind == "px" or len(code) <= 3 else f"{code[:3]}.{code[3:]}"
    if kind == "px" and version == "9":
        dotted = f"{code[:2]}.{code[2:]}"
    return [f"{vocab[(version, kind)]}/{dotted}"]


def _dx(book: _CodeBook, version: str, code: str, desc: str) -> int:
    return book.add(f"DIAGNOSIS//ICD//{version}//{code}", desc, _icd_parent(version, code, "dx"))


def _px(book: _CodeBook, version: str, code: str, desc: str) -> int:
    return book.add(f"PROCEDURE//ICD//{version}//{code}", desc, _icd_parent(version, code, "px"))


def _med(book: _CodeBook, drug: str) -> int:
    return book.add(f"MEDICATION//{drug}//Administered", f"{drug} administered (eMAR)")


def _pseudo_codes(rng, n, make, taken) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        code = make(rng)
        if code not in taken:
            taken.add(code)
            out.append(code)
    return out


def _rare_pools(book: _CodeBook, rng) -> dict[str, np.ndarray]:
    """Seed-independent rare diagnosis/procedure codes: the heavy tail of the code distribution."""
    taken = {c.rsplit("//", 1)[-1] for c in book.codes}
    letters, digits, pcs = "ABCDEFGHIJKLMNOQRSTZ", "0123456789", "0123456789ABCDFGHJKLMNPQRSTVWXYZ"
    mk10 = lambda r: r.choice(list(letters)) + "".join(r.choice(list(digits), 2 + r.integers(1, 3)))
    mk9 = lambda r: "".join(r.choice(list(digits), 3 + r.integers(0, 3)))
    mkp10 = lambda r: r.choice(list("0BDF3")) + "".join(r.choice(list(pcs), 6))
    mkp9 = lambda r: "".join(r.choice(list(digits), 4))
    dx10 = [_dx(book, "10", c, "Synthetic ICD-10-CM diagnosis") for c in _pseudo_codes(rng, N_DX_POOL10, mk10, taken)]
    dx9 = [_dx(book, "9", c, "Synthetic ICD-9-CM diagnosis") for c in _pseudo_codes(rng, N_DX_POOL9, mk9, taken)]
    px10 = [_px(book, "10", c, "Synthetic ICD-10-PCS procedure") for c in _pseudo_codes(rng, N_PX_POOL10, mkp10, taken)]
    px9 = [_px(book, "9", c, "Synthetic ICD-9 procedure") for c in _pseudo_codes(rng, N_PX_POOL9, mkp9, taken)]
    return dict(dx10=np.array(dx10), dx9=np.array(dx9), px10=np.array(px10), px9=np.array(px9))


def _padded(rows: list[list[int]], width: int = 0) -> tuple[np.ndarray, np.ndarray]:
    width = max(width, max(len(r) for r in rows))
    out = np.array([r + [r[-1]] * (width - len(r)) for r in rows], np.int32)
    return out, np.array([len(r) for r in rows], np.int32)


@dataclasses.dataclass(frozen=True)
class Vocab:
    """Everything the generator samples from, as arrays indexed by code/condition/problem/lab."""

    codes: list[str]
    descriptions: list[str]
    parents: list
    code_id: dict
    arrays: dict  # name -> np.ndarray (see build_vocab for the names)


def _zipf_cdf(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return np.cumsum(weights) / weights.sum()


def _condition_arrays(book: _CodeBook, labs: list[str]) -> dict:
    conds = T.CONDITIONS
    lab_ix = {k: i for i, k in enumerate(labs)}
    effect = np.zeros((len(conds), len(labs)), np.float32)
    for k, c in enumerate(conds):
        for lab, shift in c["labs"].items():
            effect[k, lab_ix[lab]] = shift
    dx10, len10 = _padded([[_dx(book, "10", x, c["desc"]) for x in c["icd10"]] for c in conds])
    dx9, len9 = _padded([[_dx(book, "9", x, c["desc"]) for x in c["icd9"]] for c in conds])
    name_ix = {c["name"]: k for k, c in enumerate(conds)}
    links = np.array([(name_ix[a], name_ix[b], p, d) for a, b, p, d in T.CONDITION_LINKS], np.float64)
    return dict(
        cond_intercept=np.array([c["intercept"] for c in conds]),
        cond_loadings=np.array([c["loadings"] for c in conds], np.float64),
        cond_age_coef=np.array([c["age_coef"] for c in conds]),
        cond_onset=np.array([c["onset"] for c in conds], np.float64),
        cond_weight=np.array([c["weight"] for c in conds]),
        cond_lab_effect=effect, cond_dx10=dx10, cond_len10=len10, cond_dx9=dx9, cond_len9=len9,
        cond_links=links,
    )


def _acute_arrays(book: _CodeBook, labs: list[str], cond_names: list[str]) -> dict:
    acute = T.ACUTE
    lab_ix = {k: i for i, k in enumerate(labs)}
    cond_ix = {k: i for i, k in enumerate(cond_names)}
    n_a, n_l = len(acute), len(labs)
    lab_effect, lab_order = np.zeros((n_a, n_l), np.float32), np.zeros((n_a, n_l), np.float32)
    cond_weight = np.zeros((n_a, len(cond_names)))
    procs = []
    for a, row in enumerate(acute):
        for lab, shift in row["labs"].items():
            lab_effect[a, lab_ix[lab]] = shift
        for lab, p in row["orders"].items():
            lab_order[a, lab_ix[lab]] = p
        for cond, w in row["conds"].items():
            cond_weight[a, cond_ix[cond]] = w
        for p10, p9, prob in row["procs"]:
            procs.append((a, _px(book, "10", p10, row["name"]), _px(book, "9", p9, row["name"]), prob))
    dx10, _ = _padded([[_dx(book, "10", x, r["name"]) for x in r["icd10"]] for r in acute])
    dx9, _ = _padded([[_dx(book, "9", x, r["name"]) for x in r["icd9"]] for r in acute], dx10.shape[1])
    drg = np.array([[book.add(f"DRG//HCFA//{d}", f"MS-DRG {d} ({r['name']})") for d in r["drg"]] for r in acute])
    return dict(
        acute_base=np.array([r["base"] for r in acute]), acute_cond=cond_weight,
        acute_elective=np.array([r["elective"] for r in acute]),
        acute_sev=np.array([r["sev"] for r in acute]), acute_icu=np.array([r["icu"] for r in acute]),
        acute_los=np.array([r["los"] for r in acute], np.float64),
        acute_unit=np.array([r["unit"] for r in acute]), acute_lab_effect=lab_effect,
        acute_lab_order=lab_order, acute_dx10=dx10, acute_dx9=dx9, acute_drg=drg,
        acute_proc=np.array(procs, np.float64).reshape(-1, 4),
    )


def _lab_arrays(book: _CodeBook, labs: list[str]) -> dict:
    rows = [T.LABS[k] for k in labs]
    order = np.array([T.LAB_ORDER.get(k, (0.0, 0.0)) for k in labs], np.float32)
    return dict(
        lab_code=np.array([book.add(r[0], r[1]) for r in rows], np.int32),
        lab_mean=np.array([r[2] for r in rows]), lab_sd=np.array([r[3] for r in rows]),
        lab_log=np.array([r[4] for r in rows]), lab_dec=np.array([r[5] for r in rows]),
        lab_lo=np.array([r[6] for r in rows]), lab_hi=np.array([r[7] for r in rows]),
        lab_order_inpatient=order[:, 0], lab_order_outpatient=order[:, 1],
        lab_acute_dir=np.array([T.ACUTE_DIRECTION.get(k, 0.0) for k in labs], np.float32),
        icu_vitals=np.array([labs.index(k) for k in T.ICU_VITALS]),
        icu_vital_prob=np.array(T.ICU_VITAL_PROB),
        lab_index={k: i for i, k in enumerate(labs)},
    )


def _drug_arrays(book: _CodeBook, n_cond: int) -> dict:
    """Drug probabilities per stay: common, per chronic condition, per acute problem, rare tail."""
    names: list[str] = []
    for name, _, _ in T.COMMON_MEDS:
        names.append(name)
    for row in T.CONDITIONS + T.ACUTE:
        names.extend(m for m in row["meds"] if m not in names)
    n_struct = len(names)
    names.extend(m for m in T.RARE_MEDS if m not in names)
    ids = np.array([_med(book, n) for n in names], np.int32)
    common = {n: (p, f) for n, p, f in T.COMMON_MEDS}
    base = np.array([common.get(n, (0.0, 0))[0] for n in names], np.float32)
    freq = np.array([common.get(n, (0.0, 0))[1] or 1 + (i % 3) for i, n in enumerate(names)], np.int32)
    ix = {n: i for i, n in enumerate(names)}
    by_cond = np.zeros((n_cond, len(names)), np.float32)
    for k, row in enumerate(T.CONDITIONS):
        for m in row["meds"]:
            by_cond[k, ix[m]] = 0.45
    by_acute = np.zeros((len(T.ACUTE), len(names)), np.float32)
    for a, row in enumerate(T.ACUTE):
        for m in row["meds"]:
            by_acute[a, ix[m]] = 0.6
    rare = np.arange(n_struct, len(names))
    effect_drugs = np.array([ix[d] for d in T.DRUG_LAB_EFFECTS])
    effect = np.zeros((len(effect_drugs), len(T.LABS)), np.float32)
    labs = list(T.LABS)
    for e, shifts in enumerate(T.DRUG_LAB_EFFECTS.values()):
        for lab, shift in shifts.items():
            effect[e, labs.index(lab)] = shift
    effect_slot = np.full(len(names), -1)
    effect_slot[effect_drugs] = np.arange(len(effect_drugs))
    return dict(drug_code=ids, drug_base=base, drug_freq=freq, drug_by_cond=by_cond,
                drug_by_acute=by_acute, rare_drugs=rare, drug_effect_slot=effect_slot,
                drug_lab_effect=effect)


@functools.lru_cache(maxsize=1)
def build_vocab() -> Vocab:
    """The generator's code list and parameter arrays (cached; identical in every process)."""
    book = _CodeBook()
    for code, desc in [("MEDS_BIRTH", "Birth"), ("MEDS_DEATH", "Death"), ("GENDER//F", "Female"),
                       ("GENDER//M", "Male")]:
        book.add(code, desc)
    races = [book.add(f"RACE//{r}", f"Race: {r}") for r, _ in T.RACES]
    marital = [book.add(f"MARITAL_STATUS//{m}", f"Marital status: {m}") for m, _ in T.MARITAL]
    insurance = [book.add(f"INSURANCE//{i}", f"Insurance: {i}") for i in T.INSURANCE]
    def admissions(types, locations):
        return np.array([[book.add(f"HOSPITAL_ADMISSION//{t}//{loc}", "Hospital admission") for loc, _ in locations]
                         for t, _ in types])

    adm_em = admissions(T.EMERGENCY_TYPES, T.EMERGENCY_LOCATIONS)
    adm_el = admissions(T.ELECTIVE_TYPES, T.ELECTIVE_LOCATIONS)
    disch = [book.add(f"HOSPITAL_DISCHARGE//{d}", "Hospital discharge") for d in T.DISCHARGE_LOCATIONS]
    icu_in = [book.add(f"ICU_ADMISSION//{u}", "ICU admission") for u in T.CAREUNITS]
    icu_out = [book.add(f"ICU_DISCHARGE//{u}", "ICU discharge") for u in T.CAREUNITS]
    bp = book.add(*T.BLOOD_PRESSURE)
    labs = list(T.LABS)
    arrays = dict(races=np.array(races), race_p=np.array([p for _, p in T.RACES]),
                  marital=np.array(marital), marital_p=np.array([p for _, p in T.MARITAL]),
                  insurance=np.array(insurance), adm_emergency=adm_em, adm_elective=adm_el,
                  adm_em_type_p=np.array([p for _, p in T.EMERGENCY_TYPES]),
                  adm_em_loc_p=np.array([p for _, p in T.EMERGENCY_LOCATIONS]),
                  adm_el_type_p=np.array([p for _, p in T.ELECTIVE_TYPES]),
                  adm_el_loc_p=np.array([p for _, p in T.ELECTIVE_LOCATIONS]),
                  discharge=np.array(disch), icu_in=np.array(icu_in), icu_out=np.array(icu_out),
                  blood_pressure=bp)
    arrays.update(_lab_arrays(book, labs))
    arrays.update(_condition_arrays(book, labs))
    arrays.update(_acute_arrays(book, labs, [c["name"] for c in T.CONDITIONS]))
    arrays["icu_procs"] = {k: (_px(book, "10", a, k), _px(book, "9", b, k)) for k, (a, b) in ICU_PROCS.items()}
    arrays.update(_drug_arrays(book, len(T.CONDITIONS)))
    arrays.update({f"pool_{k}": v for k, v in _rare_pools(book, np.random.default_rng(POOL_SEED)).items()})
    arrays["dx_pool_cdf"] = _zipf_cdf(N_DX_POOL10 // (len(T.CONDITIONS) + 1), 1.05)
    arrays["px_pool_cdf"] = _zipf_cdf(N_PX_POOL10, 1.1)
    arrays["rare_drug_cdf"] = _zipf_cdf(len(arrays["rare_drugs"]), 1.1)
    return Vocab(book.codes, book.descriptions, book.parents, dict(book.index), arrays)
