"""Clinical tables behind the synthetic generator: conditions, acute problems, measurements, drugs.

Plain data, no numpy: ehr_jax.synthetic.vocab turns these into code ids and dense
matrices. Item ids, units and drug names follow MIMIC-IV (labevents, chartevents, eMAR, OMR) so
the generated codes look like the MIMIC-IV MEDS ETL's; effect sizes are invented but signed the
way clinicians would expect (CKD raises creatinine, cirrhosis lowers platelets, ...).
"""

# Latent factors that correlate chronic conditions (a patient's loadings on these drive which
# comorbidities co-occur): cardiometabolic, smoking/pulmonary, substance/liver, neuro-frailty,
# oncologic/immune.
N_FACTORS = 5

# Measurements: key -> (code, description, mean, sd, lognormal, decimals, lo, hi).
# Hospital labs use labevents item ids, ICU vitals chartevents item ids, outpatient OMR names.
LABS = {
    "creat": ("LAB//50912//mg/dL", "Creatinine", 1.0, 0.35, True, 1, 0.1, 20),
    "bun": ("LAB//51006//mg/dL", "Urea Nitrogen", 16, 0.45, True, 0, 2, 200),
    "na": ("LAB//50983//mEq/L", "Sodium", 139, 3.0, False, 0, 105, 175),
    "k": ("LAB//50971//mEq/L", "Potassium", 4.2, 0.45, False, 1, 2.0, 9.0),
    "cl": ("LAB//50902//mEq/L", "Chloride", 102, 4.0, False, 0, 70, 140),
    "hco3": ("LAB//50882//mEq/L", "Bicarbonate", 25, 3.0, False, 0, 5, 50),
    "agap": ("LAB//50868//mEq/L", "Anion Gap", 14, 2.5, False, 0, 3, 45),
    "glu": ("LAB//50931//mg/dL", "Glucose", 110, 0.3, True, 0, 20, 1200),
    "ca": ("LAB//50893//mg/dL", "Calcium, Total", 9.0, 0.5, False, 1, 5, 15),
    "mg": ("LAB//50960//mg/dL", "Magnesium", 2.0, 0.25, False, 1, 0.5, 5),
    "phos": ("LAB//50970//mg/dL", "Phosphate", 3.5, 0.7, False, 1, 0.5, 15),
    "wbc": ("LAB//51301//K/uL", "White Blood Cells", 8.0, 0.35, True, 1, 0.1, 150),
    "hgb": ("LAB//51222//g/dL", "Hemoglobin", 12.5, 1.7, False, 1, 3, 20),
    "hct": ("LAB//51221//%", "Hematocrit", 37, 5.0, False, 1, 10, 60),
    "plt": ("LAB//51265//K/uL", "Platelet Count", 230, 0.35, True, 0, 5, 1000),
    "rbc": ("LAB//51279//m/uL", "Red Blood Cells", 4.1, 0.6, False, 2, 1, 7),
    "mcv": ("LAB//51250//fL", "MCV", 90, 6.0, False, 0, 60, 130),
    "mch": ("LAB//51248//pg", "MCH", 30, 2.5, False, 1, 18, 40),
    "mchc": ("LAB//51249//g/dL", "MCHC", 33, 1.2, False, 1, 27, 38),
    "rdw": ("LAB//51277//%", "RDW", 14.3, 1.6, False, 1, 10, 30),
    "alt": ("LAB//50861//IU/L", "Alanine Aminotransferase (ALT)", 25, 0.6, True, 0, 3, 5000),
    "ast": ("LAB//50878//IU/L", "Asparate Aminotransferase (AST)", 28, 0.6, True, 0, 5, 5000),
    "alp": ("LAB//50863//IU/L", "Alkaline Phosphatase", 85, 0.45, True, 0, 15, 2000),
    "tbili": ("LAB//50885//mg/dL", "Bilirubin, Total", 0.6, 0.6, True, 1, 0.1, 40),
    "alb": ("LAB//50862//g/dL", "Albumin", 3.8, 0.5, False, 1, 1.0, 5.5),
    "inr": ("LAB//51237//UNK", "INR(PT)", 1.1, 0.15, True, 1, 0.8, 10),
    "pt": ("LAB//51274//sec", "PT", 12.5, 0.15, True, 1, 9, 100),
    "ptt": ("LAB//51275//sec", "PTT", 31, 0.2, True, 1, 18, 150),
    "lact": ("LAB//50813//mmol/L", "Lactate", 1.4, 0.4, True, 1, 0.3, 20),
    "trop": ("LAB//51003//ng/mL", "Troponin T", 0.02, 1.0, True, 2, 0.01, 25),
    "bnp": ("LAB//50963//pg/mL", "NTproBNP", 250, 1.1, True, 0, 5, 70000),
    "ph": ("LAB//50820//units", "pH", 7.39, 0.05, False, 2, 6.8, 7.7),
    "po2": ("LAB//50821//mm Hg", "pO2", 90, 0.3, True, 0, 25, 600),
    "pco2": ("LAB//50818//mm Hg", "pCO2", 41, 6.0, False, 0, 15, 120),
    "lipase": ("LAB//50956//IU/L", "Lipase", 35, 0.6, True, 0, 3, 5000),
    "ck": ("LAB//50910//IU/L", "Creatine Kinase (CK)", 120, 0.8, True, 0, 10, 50000),
    "a1c": ("LAB//50852//%", "% Hemoglobin A1c", 5.6, 0.12, True, 1, 4, 16),
    "tsh": ("LAB//50993//uIU/mL", "Thyroid Stimulating Hormone", 1.8, 0.6, True, 2, 0.01, 100),
    "chol": ("LAB//50907//mg/dL", "Cholesterol, Total", 180, 35, False, 0, 60, 450),
    "trig": ("LAB//51000//mg/dL", "Triglycerides", 130, 0.5, True, 0, 20, 3000),
    "crp": ("LAB//50889//mg/L", "C-Reactive Protein", 5, 1.1, True, 1, 0.1, 400),
    "neut": ("LAB//51256//%", "Neutrophils", 65, 10, False, 1, 5, 98),
    "lymph": ("LAB//51244//%", "Lymphocytes", 22, 8, False, 1, 1, 90),
    "eos": ("LAB//51200//%", "Eosinophils", 2, 0.6, True, 1, 0.1, 40),
    "ferritin": ("LAB//50924//ng/mL", "Ferritin", 150, 0.9, True, 0, 3, 20000),
    "ammonia": ("LAB//50866//umol/L", "Ammonia", 30, 0.5, True, 0, 5, 500),
    "ldh": ("LAB//50954//IU/L", "Lactate Dehydrogenase (LD)", 220, 0.4, True, 0, 60, 5000),
    "iron": ("LAB//50952//ug/dL", "Iron", 70, 0.45, True, 0, 5, 400),
    "b12": ("LAB//51010//pg/mL", "Vitamin B12", 450, 0.45, True, 0, 50, 3000),
    "tprot": ("LAB//50976//g/dL", "Protein, Total", 6.6, 0.6, False, 1, 3, 11),
    "vanco": ("LAB//51009//ug/mL", "Vancomycin", 15, 0.4, True, 1, 2, 80),
    "upH": ("LAB//51491//units", "pH (urine)", 6.0, 0.7, False, 1, 4.5, 9),
    "usg": ("LAB//51498//UNK", "Specific Gravity", 1.015, 0.006, False, 3, 1.0, 1.04),
    "uwbc": ("LAB//51516//#/hpf", "WBC (urine)", 4, 1.1, True, 0, 0, 500),
    "hr": ("LAB//220045//bpm", "Heart Rate", 84, 14, False, 0, 25, 220),
    "sbp": ("LAB//220179//mmHg", "Non Invasive Blood Pressure systolic", 122, 17, False, 0, 50, 240),
    "dbp": ("LAB//220180//mmHg", "Non Invasive Blood Pressure diastolic", 65, 11, False, 0, 20, 140),
    "mbp": ("LAB//220181//mmHg", "Non Invasive Blood Pressure mean", 82, 11, False, 0, 30, 170),
    "rr": ("LAB//220210//insp/min", "Respiratory Rate", 18, 4, False, 0, 4, 60),
    "spo2": ("LAB//220277//%", "O2 saturation pulseoxymetry", 97, 2.0, False, 0, 50, 100),
    "temp": ("LAB//223761//°F", "Temperature Fahrenheit", 98.5, 0.9, False, 1, 91, 107),
    "fsglu": ("LAB//225664//mg/dL", "Glucose finger stick (range 70-100)", 130, 0.3, True, 0, 20, 800),
    "fio2": ("LAB//223835//%", "Inspired O2 Fraction", 40, 0.3, True, 0, 21, 100),
    "gcs": ("LAB//220739//UNK", "GCS - Eye Opening", 3.6, 0.5, False, 0, 1, 4),
    "weight_kg": ("LAB//226512//kg", "Admission Weight (Kg)", 80, 0.2, True, 1, 35, 250),
    "weight_lbs": ("Weight (Lbs)", "Weight (Lbs)", 176, 0.2, True, 1, 77, 550),
    "bmi": ("BMI (kg/m2)", "BMI (kg/m2)", 27, 0.18, True, 1, 14, 70),
}
ICU_VITALS = ("hr", "sbp", "dbp", "mbp", "rr", "spo2", "temp", "fsglu", "fio2", "gcs")
ICU_VITAL_PROB = (0.97, 0.6, 0.6, 0.6, 0.9, 0.93, 0.25, 0.12, 0.0, 0.12)
BLOOD_PRESSURE = ("Blood Pressure", "Blood Pressure (text value systolic/diastolic)")

# Inpatient daily panel: probability each lab is drawn on a hospital day before any
# condition- or problem-specific orders; outpatient visits use the second number.
LAB_ORDER = {
    "creat": (0.95, 0.42), "bun": (0.95, 0.42), "na": (0.95, 0.42), "k": (0.95, 0.42),
    "cl": (0.94, 0.42), "hco3": (0.94, 0.42), "agap": (0.9, 0.39), "glu": (0.94, 0.42),
    "ca": (0.7, 0.24), "mg": (0.8, 0.12), "phos": (0.7, 0.12), "wbc": (0.9, 0.36),
    "hgb": (0.9, 0.36), "hct": (0.9, 0.36), "plt": (0.9, 0.36), "rbc": (0.5, 0.24),
    "mcv": (0.5, 0.24), "mch": (0.45, 0.24), "mchc": (0.45, 0.24), "rdw": (0.45, 0.24),
    "alt": (0.25, 0.15), "ast": (0.25, 0.15), "alp": (0.22, 0.13), "tbili": (0.25, 0.13),
    "alb": (0.25, 0.09), "inr": (0.3, 0.03), "pt": (0.3, 0.03), "ptt": (0.25, 0.02),
    "lact": (0.08, 0.0), "trop": (0.05, 0.0), "bnp": (0.03, 0.01), "ph": (0.05, 0.0),
    "po2": (0.05, 0.0), "pco2": (0.05, 0.0), "lipase": (0.04, 0.01), "ck": (0.03, 0.01),
    "a1c": (0.02, 0.03), "tsh": (0.03, 0.07), "chol": (0.01, 0.07), "trig": (0.01, 0.06),
    "crp": (0.04, 0.02), "neut": (0.3, 0.12), "lymph": (0.3, 0.12), "eos": (0.2, 0.09),
    "ferritin": (0.02, 0.02), "ammonia": (0.01, 0.0), "ldh": (0.03, 0.01),
    "iron": (0.02, 0.02), "b12": (0.02, 0.02), "tprot": (0.05, 0.03), "vanco": (0.0, 0.0),
    "upH": (0.08, 0.03), "usg": (0.08, 0.03), "uwbc": (0.08, 0.03),
}

# Generic acute-illness direction: lab shift (sd units) per unit of acute severity.
ACUTE_DIRECTION = {
    "lact": 0.8, "wbc": 0.45, "hr": 0.7, "sbp": -0.5, "dbp": -0.4, "mbp": -0.5, "rr": 0.6,
    "spo2": -0.5, "temp": 0.3, "creat": 0.3, "bun": 0.3, "hco3": -0.4, "agap": 0.4,
    "alb": -0.4, "plt": -0.2, "crp": 0.6, "ph": -0.3, "gcs": -0.5, "inr": 0.2, "glu": 0.3,
    "fio2": 0.6, "neut": 0.4, "lymph": -0.4,
}


def _cond(name, desc, icd10, icd9, intercept, loadings, age_coef, onset, weight, labs, meds):
    return dict(name=name, desc=desc, icd10=icd10, icd9=icd9, intercept=intercept,
                loadings=loadings, age_coef=age_coef, onset=onset, weight=weight, labs=labs,
                meds=meds)


# Chronic conditions. ICD lists run from mild to severe: the code a stay carries encodes the
# condition's current severity (e.g. CKD stage). loadings are on the N_FACTORS latent factors.
CONDITIONS = [
    _cond("htn", "Hypertension", ["I10", "I10", "I119", "I129", "I110"], ["4019", "4019", "40390", "40391"], 0.0, (1.1, .3, .2, .1, 0), 0.5, 50, 0.1, {"sbp": 0.8, "dbp": 0.6, "mbp": 0.7}, ["Amlodipine", "Lisinopril", "Hydrochlorothiazide"]),
    _cond("dm2", "Type 2 diabetes", ["E119", "E1165", "E1122", "E1142", "E1151"], ["25000", "25002", "25040", "25060"], -0.9, (1.3, .1, .1, 0, 0), 0.3, 52, 0.25, {"glu": 1.2, "a1c": 2.0, "fsglu": 1.2, "trig": 0.5, "creat": 0.2}, ["Insulin", "MetFORMIN (Glucophage)", "Glargine"]),
    _cond("hld", "Hyperlipidemia", ["E785", "E785", "E7849", "E782"], ["2724", "2724", "2720"], -0.2, (1.0, .2, 0, 0, 0), 0.4, 50, 0.05, {"chol": 0.8, "trig": 0.6}, ["Atorvastatin", "Simvastatin"]),
    _cond("cad", "Coronary artery disease", ["I2510", "I2510", "I252", "I25119", "I25110"], ["41401", "41401", "412", "4148"], -1.4, (1.2, .6, .1, 0, 0), 0.6, 62, 0.45, {"trop": 0.6, "ck": 0.2}, ["Aspirin", "Metoprolol Tartrate", "Clopidogrel", "Atorvastatin"]),
    _cond("chf", "Heart failure", ["I5030", "I5032", "I5022", "I5023", "I5043"], ["4280", "42832", "42822", "42823"], -2.0, (1.2, .5, .3, .3, 0), 0.7, 68, 0.9, {"bnp": 2.2, "na": -0.5, "creat": 0.4, "bun": 0.5, "spo2": -0.3}, ["Furosemide", "Metoprolol Succinate XL", "Spironolactone", "Carvedilol"]),
    _cond("afib", "Atrial fibrillation", ["I4891", "I4891", "I480", "I4820"], ["42731", "42731"], -1.8, (.9, .3, .4, .3, 0), 0.8, 70, 0.35, {"hr": 0.5, "inr": 0.6, "pt": 0.6}, ["Apixaban", "Warfarin", "Diltiazem", "Metoprolol Tartrate"]),
    _cond("ckd", "Chronic kidney disease", ["N189", "N183", "N1831", "N1832", "N184", "N185", "N186"], ["5859", "5853", "5854", "5855", "5856"], -1.7, (1.2, .2, .2, .3, 0), 0.6, 65, 0.8, {"creat": 3.0, "bun": 2.0, "k": 0.6, "hco3": -0.6, "phos": 0.9, "hgb": -0.7, "ca": -0.3}, ["Calcitriol", "Sevelamer", "Sodium Bicarbonate"]),
    _cond("copd", "COPD", ["J449", "J449", "J441", "J9611"], ["4928", "496", "49121"], -1.8, (.2, 1.6, .3, .2, 0), 0.5, 62, 0.7, {"pco2": 1.2, "spo2": -0.6, "hco3": 0.6, "ph": -0.2}, ["Albuterol Inhaler", "Tiotropium Bromide", "Fluticasone-Salmeterol Diskus (250/50)"]),
    _cond("asthma", "Asthma", ["J45909", "J45909", "J45901", "J4550"], ["49390", "49390", "49392"], -1.6, (.1, .6, 0, .3, .2), -0.2, 30, 0.15, {"eos": 0.8}, ["Albuterol Inhaler", "Montelukast"]),
    _cond("obesity", "Obesity", ["E669", "E6601", "Z6841", "Z6845"], ["27800", "27801", "V8541"], -0.8, (1.0, 0, .2, .2, 0), 0.0, 40, 0.1, {"weight_kg": 1.6, "weight_lbs": 1.6, "bmi": 1.8, "glu": 0.2}, []),
    _cond("cirrh", "Cirrhosis / chronic liver disease", ["K7460", "K7030", "K7031", "K766", "K7682"], ["5715", "5712", "5723", "5722"], -2.5, (0, .3, 1.6, .1, .1), 0.2, 55, 1.1, {"tbili": 1.8, "inr": 1.5, "pt": 1.5, "alb": -1.5, "plt": -1.3, "ammonia": 1.5, "na": -0.6, "ast": 1.0, "alt": 0.6, "alp": 0.6}, ["Lactulose", "Rifaximin", "Spironolactone", "Nadolol"]),
    _cond("aud", "Alcohol use disorder", ["F1010", "F1020", "F10239", "F10231"], ["30500", "30390", "2912"], -1.8, (0, .4, 1.7, .3, 0), -0.5, 38, 0.35, {"ast": 0.9, "alt": 0.4, "mcv": 1.0, "mg": -0.4, "plt": -0.3}, ["Thiamine", "FoLIC Acid", "Multivitamins"]),
    _cond("dep", "Depression", ["F329", "F329", "F339", "F332"], ["311", "311", "29630"], -1.0, (0, .2, .5, .9, 0), -0.1, 35, 0.1, {}, ["Sertraline", "Citalopram", "Trazodone"]),
    _cond("anx", "Anxiety", ["F419", "F419", "F411"], ["30000", "30002"], -1.1, (0, .1, .4, .8, 0), -0.3, 32, 0.05, {"hr": 0.2}, ["LORazepam", "Buspirone"]),
    _cond("dementia", "Dementia", ["F0390", "G309", "F0391", "G301"], ["2900", "3310", "29410"], -4.0, (.2, 0, 0, 1.3, 0), 1.5, 80, 0.8, {"alb": -0.4}, ["Donepezil", "Memantine", "QUEtiapine Fumarate"]),
    _cond("hypothy", "Hypothyroidism", ["E039", "E039", "E038"], ["2449", "2449"], -1.6, (.3, 0, 0, .3, .2), 0.4, 50, 0.05, {"tsh": 1.6}, ["Levothyroxine Sodium"]),
    _cond("anemia", "Chronic anemia", ["D649", "D631", "D509", "D62"], ["2859", "28521", "2809"], -1.5, (.3, 0, .3, .3, .6), 0.4, 60, 0.3, {"hgb": -1.5, "hct": -1.5, "rbc": -1.3, "ferritin": -0.5, "iron": -0.8, "rdw": 0.8, "mcv": -0.4}, ["Ferrous Sulfate", "Cyanocobalamin"]),
    _cond("cancer", "Solid tumor (lung, colon, breast, pancreas)", ["C3490", "C189", "C50919", "C259", "C7951", "C787", "C7800"], ["1629", "1539", "1749", "1579", "1985", "1977"], -2.8, (0, .8, .2, 0, 1.5), 0.7, 63, 1.4, {"alb": -0.8, "hgb": -0.6, "alp": 0.5, "ldh": 0.7, "wbc": 0.2, "ca": 0.3}, ["Ondansetron", "OxyCODONE (Immediate Release)", "Dexamethasone", "Prochlorperazine"]),
    _cond("heme", "Hematologic malignancy", ["C8590", "C9100", "C9000", "C9200"], ["20280", "20410", "20300", "20500"], -4.2, (0, 0, 0, 0, 1.6), 0.6, 60, 1.2, {"wbc": 1.0, "plt": -1.0, "hgb": -0.8, "ldh": 1.2, "neut": -0.6}, ["Acyclovir", "Allopurinol", "Ondansetron"]),
    _cond("hiv", "HIV", ["B20", "B20", "Z21"], ["042", "V08"], -4.2, (0, .2, 1.0, 0, .8), -0.8, 35, 0.6, {"lymph": -1.0, "plt": -0.3}, ["Emtricitabine-Tenofovir (Truvada)", "Dolutegravir", "Sulfameth/Trimethoprim DS"]),
    _cond("stroke", "Cerebrovascular disease", ["I6930", "Z8673", "I69351", "I639"], ["43820", "V1254", "4389"], -2.4, (1.1, .4, .2, .5, 0), 0.9, 70, 0.6, {"gcs": -0.4}, ["Aspirin", "Clopidogrel", "Atorvastatin"]),
    _cond("pvd", "Peripheral vascular disease", ["I739", "I70209", "I70219", "I70245"], ["4439", "44020", "44022"], -2.4, (1.0, .9, 0, 0, 0), 0.7, 66, 0.45, {}, ["Cilostazol", "Aspirin"]),
    _cond("oud", "Opioid use disorder", ["F1120", "F1120", "F1123"], ["30550", "30400"], -2.6, (0, .3, 1.5, .4, 0), -0.7, 32, 0.4, {"ast": 0.3}, ["Methadone", "Buprenorphine-Naloxone (8mg-2mg)"]),
    _cond("osa", "Obstructive sleep apnea", ["G4733", "G4733"], ["32723"], -1.8, (1.0, .4, 0, 0, 0), 0.2, 50, 0.05, {"pco2": 0.3}, []),
    _cond("gerd", "GERD", ["K219", "K219", "K210"], ["53081"], -0.9, (.3, .2, .3, .2, 0), 0.2, 45, 0.0, {}, ["Omeprazole", "Pantoprazole"]),
    _cond("oa", "Osteoarthritis", ["M1990", "M170", "M161"], ["71590", "71596", "71595"], -1.1, (.4, 0, 0, .4, 0), 0.8, 60, 0.05, {}, ["Acetaminophen", "TraMADol"]),
    _cond("hcv", "Chronic hepatitis C", ["B1920", "B182"], ["07070", "07054"], -3.0, (0, .2, 1.4, 0, .3), -0.3, 40, 0.35, {"alt": 0.8, "ast": 0.8, "plt": -0.3}, []),
]

# Explicit disease-to-disease links (cause, effect, probability, mean delay in years): a
# condition can pull the onset of another forward, so an early code predicts a later one.
CONDITION_LINKS = [
    ("htn", "cad", 0.25, 10), ("dm2", "ckd", 0.35, 9), ("htn", "ckd", 0.15, 12), ("cad", "chf", 0.35, 6),
    ("afib", "stroke", 0.2, 6), ("aud", "cirrh", 0.35, 10), ("hcv", "cirrh", 0.35, 12),
    ("copd", "chf", 0.15, 8), ("obesity", "dm2", 0.35, 8), ("obesity", "osa", 0.4, 5),
    ("dm2", "pvd", 0.2, 10), ("ckd", "anemia", 0.4, 4), ("stroke", "dementia", 0.2, 6),
    ("htn", "afib", 0.15, 12), ("oud", "hcv", 0.3, 6), ("dep", "aud", 0.12, 5), ("cancer", "anemia", 0.3, 1),
]

CAREUNITS = [
    "Medical Intensive Care Unit (MICU)", "Surgical Intensive Care Unit (SICU)",
    "Cardiac Vascular Intensive Care Unit (CVICU)", "Coronary Care Unit (CCU)",
    "Trauma SICU (TSICU)", "Medical/Surgical Intensive Care Unit (MICU/SICU)",
    "Neuro Surgical Intensive Care Unit (Neuro SICU)",
]
MICU, SICU, CVICU, CCU, TSICU, MSICU, NSICU = range(7)


def _acute(name, icd10, icd9, base, conds, elective, sev, icu, los, unit, labs, orders, meds, procs, drg):
    return dict(name=name, icd10=icd10, icd9=icd9, base=base, conds=conds, elective=elective,
                sev=sev, icu=icu, los=los, unit=unit, labs=labs, orders=orders, meds=meds,
                procs=procs, drg=drg)


# Acute problems that cause a hospital stay. base: log-weight; conds: log-weight added per unit
# of a chronic condition's severity; sev: mean acute severity; icu: ICU logit offset; los:
# median stay in days; procs: (ICD-10-PCS, ICD-9 procedure, probability); drg: (with MCC, without).
ACUTE = [
    _acute("sepsis", ["A419", "R6521", "R6520", "A4151"], ["0389", "78552", "99592"], 0.2, {"cancer": 1.0, "heme": 1.5, "ckd": .6, "dm2": .4, "cirrh": .8, "hiv": 1.2, "dementia": .8}, False, 1.6, 0.4, 6, MICU, {"wbc": 1.2, "lact": 1.0, "temp": 0.8, "crp": 1.2}, {"lact": .8, "crp": .3, "vanco": .4, "uwbc": .5, "upH": .5, "usg": .5}, ["Vancomycin", "Piperacillin-Tazobactam", "CefePIME", "Norepinephrine", "Sodium Chloride 0.9%"], [("5A1955Z", "9672", .15), ("02HV33Z", "3893", .3)], ("871", "872")),
    _acute("pneumonia", ["J189", "J159", "J690", "J9601"], ["486", "4829", "5070"], 0.6, {"copd": 1.0, "dementia": .8, "chf": .3, "cancer": .4}, False, 0.9, -0.6, 5, MICU, {"wbc": 0.9, "spo2": -0.8, "temp": 0.6, "rr": 0.6}, {"crp": .2, "ph": .2, "po2": .2, "pco2": .2}, ["CefTRIAXone", "Azithromycin", "Guaifenesin", "Ipratropium-Albuterol Neb"], [("5A1945Z", "9671", .05), ("0BJ08ZZ", "3324", .05)], ("193", "194")),
    _acute("chf_exac", ["I5023", "I5033", "I5043", "I110"], ["42823", "42833", "4280"], -2.0, {"chf": 3.2, "ckd": .3, "afib": .4}, False, 0.8, -0.7, 5, CCU, {"bnp": 1.5, "spo2": -0.5, "na": -0.3, "creat": 0.3}, {"bnp": .7, "trop": .4, "mg": .1}, ["Furosemide", "Potassium Chloride", "Metolazone"], [("4A023N7", "3722", .1)], ("291", "292")),
    _acute("copd_exac", ["J441", "J440", "J9612", "J9622"], ["49121", "49122", "51884"], -1.8, {"copd": 3.2, "asthma": 1.0}, False, 0.7, -0.9, 4, MICU, {"pco2": 0.8, "spo2": -0.8, "rr": 0.8, "ph": -0.5}, {"ph": .5, "po2": .5, "pco2": .5}, ["PredniSONE", "Ipratropium-Albuterol Neb", "Methylprednisolone Sodium Succ", "Azithromycin"], [("5A09357", "9390", .2)], ("190", "191")),
    _acute("aki", ["N179", "N170", "E872", "E875"], ["5849", "5845", "2762"], -0.6, {"ckd": 1.6, "chf": .5, "dm2": .3, "cirrh": .4}, False, 0.7, -1.3, 4, MICU, {"creat": 1.8, "bun": 1.5, "k": 0.7, "hco3": -0.6}, {"uwbc": .3, "usg": .4, "upH": .4}, ["Sodium Chloride 0.9%", "Sodium Bicarbonate"], [("5A1D70Z", "3995", .12)], ("682", "683")),
    _acute("gibleed", ["K922", "K921", "K2971", "I8511"], ["5789", "5781", "53100"], -0.5, {"cirrh": 1.8, "afib": .5, "cad": .3, "aud": .5}, False, 0.9, -0.3, 4, MICU, {"hgb": -1.8, "hct": -1.8, "bun": 1.0, "hr": 0.5}, {"inr": .5, "pt": .5, "ptt": .3}, ["Pantoprazole", "Octreotide Acetate"], [("0DJ08ZZ", "4513", .6), ("30233N1", "9904", .5)], ("377", "378")),
    _acute("mi", ["I214", "I2119", "I2109", "I249"], ["41071", "41041", "41011"], -1.8, {"cad": 2.2, "dm2": .5, "htn": .3, "pvd": .5}, False, 1.0, 0.0, 4, CCU, {"trop": 3.0, "ck": 1.5}, {"trop": .9, "ck": .5, "chol": .3, "a1c": .2}, ["Heparin", "Aspirin", "Clopidogrel", "Atorvastatin", "Nitroglycerin"], [("4A023N7", "3722", .6), ("027034Z", "0066", .4)], ("280", "281")),
    _acute("stroke", ["I63512", "I639", "I611", "G459"], ["43411", "4349", "431"], -2.0, {"afib": 1.2, "htn": .6, "stroke": 1.2, "dm2": .3}, False, 1.1, 0.2, 5, NSICU, {"gcs": -1.2, "sbp": 0.6}, {"a1c": .3, "chol": .3, "ptt": .3}, ["Aspirin", "Atorvastatin", "Labetalol"], [("B020ZZZ", "8703", .2)], ("064", "065")),
    _acute("dka", ["E1110", "E1010", "E1165", "E871"], ["25013", "25012", "2760"], -2.2, {"dm2": 2.0}, False, 0.9, 0.2, 3, MICU, {"glu": 2.5, "agap": 1.8, "hco3": -1.8, "ph": -1.0, "k": 0.6, "fsglu": 2.5}, {"ph": .6, "po2": .3, "pco2": .6, "a1c": .5}, ["Insulin", "Potassium Chloride", "Sodium Chloride 0.9%"], [], ("637", "638")),
    _acute("hepatic", ["K7290", "K7682", "K652", "R188"], ["5722", "56723", "7895"], -3.0, {"cirrh": 3.5, "aud": .5}, False, 1.1, -0.2, 6, MICU, {"ammonia": 1.5, "tbili": 1.0, "inr": 0.6, "na": -0.6, "gcs": -0.6}, {"ammonia": .6, "inr": .6, "pt": .6}, ["Lactulose", "Rifaximin", "Albumin 25% (12.5g / 50mL)", "CefTRIAXone"], [("0W9G3ZZ", "5491", .5)], ("432", "433")),
    _acute("withdrawal", ["F10239", "F10231", "F10939", "R569"], ["2910", "2912", "7803"], -2.2, {"aud": 3.0, "oud": .8}, False, 0.6, -0.5, 4, MICU, {"hr": 0.8, "sbp": 0.5, "mg": -0.5}, {"mg": .4}, ["Diazepam", "Thiamine", "FoLIC Acid", "PHENObarbital"], [], ("896", "897")),
    _acute("uti", ["N390", "N10", "B9620"], ["5990", "5908", "0414"], 0.0, {"dementia": 1.2, "dm2": .3, "ckd": .3}, False, 0.4, -2.0, 4, MICU, {"wbc": 0.6, "temp": 0.4}, {"uwbc": .9, "upH": .9, "usg": .9}, ["CefTRIAXone", "Ciprofloxacin HCl", "Nitrofurantoin (Macrodantin)"], [], ("689", "690")),
    _acute("cellulitis", ["L03116", "L03115", "L03311", "L02416"], ["6826", "6827", "6822"], -0.4, {"dm2": .8, "obesity": .8, "pvd": .8, "oud": 1.0}, False, 0.3, -2.6, 4, SICU, {"wbc": 0.6, "crp": 0.8}, {"crp": .3, "vanco": .3}, ["Vancomycin", "CeFAZolin", "Clindamycin"], [("0JB80ZZ", "8604", .15)], ("602", "603")),
    _acute("hipfx", ["S72001A", "S72141A", "W19XXXA", "S065X0A"], ["82009", "82021", "E8889"], -1.4, {"dementia": 1.2, "oa": .5}, False, 0.6, -1.2, 6, TSICU, {"hgb": -0.6, "ck": 0.6}, {"ck": .3}, ["OxyCODONE (Immediate Release)", "Enoxaparin Sodium", "Acetaminophen"], [("0QS734Z", "7915", .6), ("0SRR0J9", "8152", .3)], ("480", "481")),
    _acute("syncope", ["R55", "R42", "I951"], ["7802", "7804", "4580"], -0.6, {"afib": .4, "htn": .2}, False, 0.1, -3.0, 2, CCU, {"sbp": -0.3}, {"trop": .4, "ck": .2}, ["Sodium Chloride 0.9%"], [], ("312", "312")),
    _acute("chestpain", ["R0789", "R079", "I209", "R0602"], ["78659", "78650", "4139"], -0.2, {"cad": 1.2, "anx": .5, "gerd": .5}, False, 0.1, -3.0, 2, CCU, {"trop": 0.4}, {"trop": .9, "ck": .4, "chol": .2}, ["Aspirin", "Nitroglycerin", "Heparin"], [("4A023N7", "3722", .2)], ("313", "313")),
    _acute("afib_rvr", ["I4891", "I4892", "R000"], ["42731", "42732"], -2.0, {"afib": 2.8, "hypothy": .3}, False, 0.6, -0.8, 3, CCU, {"hr": 1.8}, {"tsh": .4, "trop": .4, "mg": .3}, ["Diltiazem", "Metoprolol Tartrate", "Heparin", "Amiodarone"], [("5A2204Z", "9961", .15)], ("308", "309")),
    _acute("pe", ["I2699", "I82401", "I2609"], ["41519", "45340", "41511"], -1.8, {"cancer": 1.5, "obesity": .4}, False, 0.8, -0.6, 4, MICU, {"spo2": -0.8, "hr": 0.8, "trop": 0.6}, {"trop": .4, "bnp": .3, "ptt": .5}, ["Heparin", "Enoxaparin Sodium", "Apixaban"], [("B246ZZZ", "8744", .4)], ("175", "176")),
    _acute("pancreatitis", ["K859", "K851", "K852"], ["5770"], -2.0, {"aud": 1.8, "hld": .5}, False, 0.7, -1.0, 5, MICU, {"lipase": 3.0, "wbc": 0.5, "trig": 0.7}, {"lipase": .8, "trig": .4}, ["HYDROmorphone (Dilaudid)", "Lactated Ringers", "Ondansetron"], [], ("438", "439")),
    _acute("joint_repl", ["M1611", "M1711", "Z96641", "M1612"], ["71535", "71536", "V4364"], -1.6, {"oa": 2.6, "obesity": .4}, True, -0.5, -3.0, 3, SICU, {"hgb": -0.5}, {}, ["CeFAZolin", "OxyCODONE (Immediate Release)", "Enoxaparin Sodium", "Acetaminophen"], [("0SRC0J9", "8154", .6), ("0SR9019", "8151", .4)], ("470", "470")),
    _acute("cardiac_surg", ["I2510", "I350", "I340", "I25110"], ["41401", "4241", "4240"], -2.8, {"cad": 1.8, "chf": .6}, True, 0.2, 2.5, 7, CVICU, {"hgb": -0.8, "trop": 1.0}, {"ptt": .6, "inr": .6, "ph": .6, "po2": .6, "pco2": .6}, ["CeFAZolin", "Aspirin", "Insulin", "Potassium Chloride", "Metoprolol Tartrate"], [("021009W", "3615", .6), ("02RF38Z", "3521", .3), ("5A1221Z", "3961", .9)], ("235", "236")),
    _acute("chemo", ["Z5111", "D701", "R5081", "C7951"], ["V5811", "28803", "78060"], -2.2, {"cancer": 2.4, "heme": 2.8}, False, 0.6, -1.2, 5, MICU, {"wbc": -1.5, "neut": -1.2, "plt": -0.8}, {"ldh": .3, "ferritin": .2}, ["Ondansetron", "Filgrastim", "CefePIME", "Acyclovir"], [("3E04305", "9925", .5)], ("846", "847")),
    _acute("sbo", ["K5660", "K56609", "K5651"], ["5609", "56081"], -1.3, {"cancer": .7}, False, 0.5, -1.5, 6, SICU, {"k": -0.4, "wbc": 0.4}, {"lact": .3, "lipase": .3}, ["HYDROmorphone (Dilaudid)", "Ondansetron", "Lactated Ringers"], [("0DTN0ZZ", "4573", .2), ("0DH67UZ", "9607", .4)], ("388", "389")),
    _acute("delirium", ["R410", "F05", "R4182", "G9341"], ["7800", "2930", "34831"], -1.5, {"dementia": 2.2, "aud": .5}, False, 0.4, -1.8, 5, MICU, {"gcs": -0.6, "na": -0.3}, {"ammonia": .2, "tsh": .2, "b12": .3}, ["QUEtiapine Fumarate", "Haloperidol"], [("009U3ZX", "0331", .05)], ("070", "071")),
    _acute("overdose", ["T400X1A", "T424X2A", "T391X1A", "F1120"], ["9650", "9694", "9651"], -2.6, {"oud": 2.6, "dep": 1.0, "aud": .6}, False, 1.0, 0.8, 2, MICU, {"gcs": -1.2, "rr": -0.8, "pco2": 0.8}, {"ph": .5, "pco2": .5, "ck": .3}, ["Naloxone", "Sodium Chloride 0.9%"], [("5A1935Z", "9671", .3)], ("917", "918")),
    _acute("hyponat", ["E871", "E870", "E8339"], ["2761", "2760"], -2.2, {"cirrh": 1.0, "chf": .8, "dep": .4, "aud": .6}, False, 0.4, -1.8, 4, MICU, {"na": -2.5}, {"mg": .2}, ["Sodium Chloride 0.9%", "Sodium Chloride 1g Tab"], [], ("640", "641")),
    _acute("chole", ["K8000", "K8018", "K8590", "K810"], ["57400", "57410", "5750"], -1.3, {"obesity": .6}, False, 0.3, -2.2, 3, SICU, {"alp": 1.2, "tbili": 0.8, "wbc": 0.5}, {"lipase": .5}, ["Piperacillin-Tazobactam", "HYDROmorphone (Dilaudid)"], [("0FT44ZZ", "5123", .6)], ("418", "419")),
    _acute("psych", ["F332", "R45851", "F209", "F312"], ["29633", "V6284", "2959"], -1.8, {"dep": 1.6, "anx": .6, "oud": .5}, False, 0.0, -3.0, 6, MICU, {}, {"tsh": .3}, ["OLANZapine", "Sertraline", "LORazepam"], [], ("885", "885")),
    _acute("backpain", ["M5416", "M545", "M4806"], ["7242", "72402"], -1.4, {"oa": .8, "cancer": .4}, False, 0.0, -3.5, 3, SICU, {}, {}, ["Lidocaine 5% Patch", "Cyclobenzaprine", "OxyCODONE (Immediate Release)"], [("0SG00A0", "8105", .1)], ("552", "552")),
    _acute("elective_gi", ["K5730", "D122", "K5790", "C189"], ["56210", "2113", "1539"], -1.9, {"cancer": 1.2}, True, -0.3, -2.0, 4, SICU, {}, {}, ["CeFAZolin", "Metronidazole (FLagyl)"], [("0DTN0ZZ", "4573", .5), ("0DJD8ZZ", "4523", .5)], ("330", "331")),
]
ACUTE_ICD9_PROC_FALLBACK = "9999"

# Admission and discharge fields, spelled as in MIMIC-IV admissions.
EMERGENCY_TYPES = (("EMERGENCY", 0.72), ("URGENT", 0.14), ("OBSERVATION ADMIT", 0.1), ("DIRECT EMER.", 0.04))
ELECTIVE_TYPES = (("ELECTIVE", 0.55), ("SURGICAL SAME DAY ADMISSION", 0.45))
EMERGENCY_LOCATIONS = (("EMERGENCY ROOM", 0.75), ("TRANSFER FROM HOSPITAL", 0.1), ("WALK-IN/SELF REFERRAL", 0.07), ("PHYSICIAN REFERRAL", 0.05), ("TRANSFER FROM SKILLED NURSING FACILITY", 0.03))
ELECTIVE_LOCATIONS = (("PHYSICIAN REFERRAL", 0.8), ("CLINIC REFERRAL", 0.12), ("PROCEDURE SITE", 0.08))
DISCHARGE_LOCATIONS = ("HOME", "HOME HEALTH CARE", "SKILLED NURSING FACILITY", "REHAB", "HOSPICE",
                       "CHRONIC/LONG TERM ACUTE CARE", "AGAINST ADVICE", "PSYCH FACILITY", "DIED")
RACES = (("WHITE", 0.62), ("BLACK/AFRICAN AMERICAN", 0.14), ("HISPANIC/LATINO - PUERTO RICAN", 0.04), ("HISPANIC OR LATINO", 0.03),
         ("ASIAN", 0.03), ("ASIAN - CHINESE", 0.02), ("OTHER", 0.04), ("UNKNOWN", 0.05), ("WHITE - OTHER EUROPEAN", 0.02), ("UNABLE TO OBTAIN", 0.01))
MARITAL = (("MARRIED", 0.42), ("SINGLE", 0.34), ("WIDOWED", 0.13), ("DIVORCED", 0.11))
INSURANCE = ("Medicare", "Medicaid", "Private", "Other")

# Drugs many inpatients get regardless of problem (probability per stay, doses per day).
COMMON_MEDS = [
    ("Sodium Chloride 0.9%  Flush", 0.6, 2), ("Heparin", 0.45, 2), ("Acetaminophen", 0.45, 2),
    ("Docusate Sodium", 0.35, 2), ("Senna", 0.35, 1), ("Polyethylene Glycol", 0.25, 1),
    ("Ondansetron", 0.25, 2), ("Pantoprazole", 0.3, 1), ("Insulin", 0.2, 4),
    ("OxyCODONE (Immediate Release)", 0.18, 3), ("Potassium Chloride", 0.2, 1),
    ("Magnesium Sulfate", 0.15, 1), ("Enoxaparin Sodium", 0.12, 1), ("Bisacodyl", 0.1, 1),
    ("Melatonin", 0.08, 1), ("Nicotine Patch", 0.06, 1), ("Famotidine", 0.06, 2),
    ("Calcium Gluconate", 0.04, 1), ("Glucagon", 0.01, 1), ("Dextrose 50%", 0.03, 1),
]
# Drugs that move labs and vitals (sd units) from their first dose on: within-stay cause and effect.
DRUG_LAB_EFFECTS = {
    "Furosemide": {"k": -0.5, "creat": 0.2, "bun": 0.3, "hco3": 0.3, "mg": -0.2},
    "Insulin": {"glu": -0.8, "fsglu": -0.9, "k": -0.2},
    "Warfarin": {"inr": 1.5, "pt": 1.5},
    "Heparin": {"ptt": 1.0},
    "Potassium Chloride": {"k": 0.4},
    "Spironolactone": {"k": 0.4},
    "Lactulose": {"ammonia": -0.7},
    "PredniSONE": {"glu": 0.6, "wbc": 0.5, "fsglu": 0.6},
    "Methylprednisolone Sodium Succ": {"glu": 0.8, "wbc": 0.6, "fsglu": 0.8},
    "Filgrastim": {"wbc": 1.5, "neut": 1.0},
    "Sodium Chloride 1g Tab": {"na": 0.6},
    "Norepinephrine": {"sbp": 0.8, "mbp": 0.8, "dbp": 0.5, "hr": 0.3},
    "Piperacillin-Tazobactam": {"creat": 0.15},
    "Vancomycin": {"creat": 0.15},
}

# Rare drugs: a heavy tail of (name) drawn by Zipf rank on top of the structured ones.
RARE_MEDS = [
    "Gabapentin", "Tamsulosin", "Finasteride", "Allopurinol", "Colchicine", "Hydralazine",
    "Isosorbide Mononitrate (Extended Release)", "Digoxin", "Sotalol", "Dofetilide", "Prednisone",
    "Hydrocortisone Na Succ.", "Fludrocortisone Acetate", "Midodrine", "Phenylephrine",
    "Vasopressin", "EPINEPHrine", "DOBUTamine", "Milrinone", "Propofol", "Fentanyl Citrate",
    "Midazolam", "Dexmedetomidine", "Cisatracurium", "Ketamine", "Morphine Sulfate",
    "HYDROmorphone (Dilaudid) PCA", "Meropenem", "Linezolid", "Daptomycin", "Micafungin",
    "Fluconazole", "Voriconazole", "Amphotericin B", "Ganciclovir", "Valganciclovir",
    "Oseltamivir", "Doxycycline Hyclate", "Levofloxacin", "Ampicillin-Sulbactam", "Aztreonam",
    "Tobramycin", "Gentamicin", "Rifampin", "Isoniazid", "Pyridoxine", "Atovaquone",
    "Pentamidine", "Tacrolimus", "Mycophenolate Mofetil", "Cyclosporine", "Sirolimus",
    "Levetiracetam", "Phenytoin", "Valproic Acid", "Lacosamide", "Lamotrigine", "Carbamazepine",
    "Lithium Carbonate", "Risperidone", "Aripiprazole", "Clozapine", "Mirtazapine", "Bupropion",
    "Venlafaxine", "Duloxetine", "Escitalopram", "Fluoxetine", "Paroxetine", "Clonazepam",
    "Alprazolam", "Zolpidem Tartrate", "Baclofen", "Tizanidine", "Methocarbamol", "Ropinirole",
    "Carbidopa-Levodopa (25-100)", "Pramipexole", "Rivastigmine", "Pyridostigmine",
    "Desmopressin Acetate", "Octreotide", "Terlipressin", "Vitamin K", "Protamine Sulfate",
    "Tranexamic Acid", "Aminocaproic Acid", "Alteplase", "Argatroban", "Bivalirudin",
    "Fondaparinux", "Rivaroxaban", "Dabigatran Etexilate", "Ticagrelor", "Prasugrel",
    "Eptifibatide", "Ezetimibe", "Rosuvastatin", "Pravastatin", "Fenofibrate", "Niacin",
    "Losartan Potassium", "Valsartan", "Sacubitril-Valsartan", "Nifedipine (Extended Release)",
    "Verapamil", "Clonidine", "Doxazosin", "Terazosin", "Labetalol HCl", "Nadolol",
    "Propranolol", "Atenolol", "Bumetanide", "Torsemide", "Chlorthalidone", "Acetazolamide",
    "Tolvaptan", "Sodium Polystyrene Sulfonate", "Patiromer", "Sevelamer Carbonate", "Cinacalcet",
    "Epoetin Alfa", "Darbepoetin Alfa", "Iron Sucrose", "Sodium Ferric Gluconate", "Glipizide",
    "Sitagliptin", "Empagliflozin", "Liraglutide", "Pioglitazone", "Insulin Lispro", "Insulin NPH",
    "Levothyroxine IV", "Methimazole", "Propylthiouracil", "Hydroxychloroquine", "Methotrexate",
    "Leflunomide", "Sulfasalazine", "Mesalamine", "Budesonide", "Infliximab", "Adalimumab",
    "Rituximab", "Cyclophosphamide", "Cytarabine", "Daunorubicin", "Vincristine", "Doxorubicin",
    "Carboplatin", "Cisplatin", "Paclitaxel", "Gemcitabine", "Fluorouracil", "Oxaliplatin",
    "Irinotecan", "Pembrolizumab", "Nivolumab", "Imatinib", "Ibrutinib", "Lenalidomide",
    "Bortezomib", "Dexamethasone IV", "Megestrol Acetate", "Dronabinol", "Scopolamine Patch",
    "Meclizine", "Promethazine", "Metoclopramide", "Loperamide", "Simethicone", "Sucralfate",
    "Misoprostol", "Ursodiol", "Cholestyramine", "Pancrelipase", "Lactase", "Nystatin",
    "Clotrimazole Troche", "Miconazole Powder", "Mupirocin Ointment", "Bacitracin Ointment",
    "Silver Sulfadiazine", "Lidocaine Jelly 2%", "Artificial Tears", "Erythromycin Ophth Oint",
    "Timolol Maleate 0.5%", "Latanoprost 0.005% Ophth. Soln.", "Brimonidine", "Fluticasone Nasal",
    "Sodium Chloride Nasal", "Benzonatate", "Codeine-Guaifenesin", "Dextromethorphan",
    "Montelukast Sodium", "Budesonide Neb", "Tiotropium Respimat", "Roflumilast", "Theophylline",
]
