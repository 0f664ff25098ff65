"""What kinds of personal data exist, which category each belongs to, and what column names say.

Three categories, as in the issue and the GDPR:
  direct_identifier  singles a person out on its own (name, e-mail, phone, national id, card, IBAN, ...)
  quasi_identifier   singles people out in combination (age, birth date, postal code, sex, race, ...);
                     these are the columns k-anonymity is computed over
  special_category   GDPR Art. 9(1) data (racial or ethnic origin, political opinions, religious or
                     philosophical beliefs, trade-union membership, genetic, biometric, health,
                     sex life or sexual orientation) and protected characteristics of
                     non-discrimination law (sex, marital or family status, national origin),
                     which a model must not learn to use unexamined
A column can be both a quasi-identifier and a special category (sex, race, national origin).

Every kind also names the HIPAA Safe Harbor identifier it is (45 CFR 164.514(b)(2)(i), items
A to R), when it is one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DIRECT, QUASI, SPECIAL = "direct_identifier", "quasi_identifier", "special_category"
CATEGORIES = (DIRECT, QUASI, SPECIAL)

HIPAA_IDENTIFIERS = {
    "A": "names",
    "B": "geographic subdivisions smaller than a state (street address, city, county, ZIP code)",
    "C": "all elements of dates (except year) directly related to an individual; ages over 89",
    "D": "telephone numbers",
    "E": "fax numbers",
    "F": "electronic mail addresses",
    "G": "social security numbers",
    "H": "medical record numbers",
    "I": "health plan beneficiary numbers",
    "J": "account numbers",
    "K": "certificate/license numbers",
    "L": "vehicle identifiers and serial numbers, including license plate numbers",
    "M": "device identifiers and serial numbers",
    "N": "web universal resource locators (URLs)",
    "O": "internet protocol (IP) address numbers",
    "P": "biometric identifiers, including finger and voice prints",
    "Q": "full face photographic images and any comparable images",
    "R": "any other unique identifying number, characteristic, or code",
}

ART9 = "GDPR Art. 9(1)"
PROTECTED = "protected characteristic (EU Charter Art. 21; equal-treatment law)"


@dataclass(frozen=True)
class Kind:
    name: str
    category: str
    description: str
    hipaa: str | None = None  # letter in HIPAA_IDENTIFIERS
    basis: str | None = None  # for special categories: which rule makes it special


_KINDS = [
    Kind("email", DIRECT, "e-mail address", "F"),
    Kind("phone", DIRECT, "telephone number", "D"),
    Kind("fax", DIRECT, "fax number", "E"),
    Kind("ssn", DIRECT, "US social security number or other national id", "G"),
    Kind("credit_card", DIRECT, "payment card number", "J"),
    Kind("iban", DIRECT, "bank account (IBAN)", "J"),
    Kind("account_number", DIRECT, "account number", "J"),
    Kind("ipv4", DIRECT, "IPv4 address", "O"),
    Kind("ipv6", DIRECT, "IPv6 address", "O"),
    Kind("ip_address", DIRECT, "IP address", "O"),
    Kind("name", DIRECT, "person's name", "A"),
    Kind("address", DIRECT, "street address", "B"),
    Kind("medical_record_number", DIRECT, "medical record number", "H"),
    Kind("health_plan_id", DIRECT, "health plan beneficiary number", "I"),
    Kind("license", DIRECT, "certificate or licence number (driver's licence, passport)", "K"),
    Kind("vehicle_id", DIRECT, "vehicle identifier or licence plate", "L"),
    Kind("device_id", DIRECT, "device identifier or serial number", "M"),
    Kind("url", DIRECT, "personal web address", "N"),
    Kind("photo", DIRECT, "face photograph", "Q"),
    Kind("record_id", DIRECT, "unique identifying number of a person (customer, patient, user id)", "R"),
    Kind("free_text", DIRECT, "free text holding personal data"),
    Kind("birth_date", QUASI, "date of birth", "C"),
    Kind("date", QUASI, "date related to a person (HIPAA: every date but the year)", "C"),
    Kind("postal_code", QUASI, "postal code", "B"),
    Kind("location", QUASI, "city, county or other place smaller than a state", "B"),
    Kind("age", QUASI, "age (HIPAA: ages over 89 are identifiers)", "C"),
    Kind("sex", QUASI, "sex or gender"),
    Kind("race", QUASI, "race or ethnicity"),
    Kind("national_origin", QUASI, "national origin or citizenship"),
]
_SPECIAL = [
    Kind("race", SPECIAL, "racial or ethnic origin", basis=ART9),
    Kind("political_opinion", SPECIAL, "political opinions", basis=ART9),
    Kind("religion", SPECIAL, "religious or philosophical beliefs", basis=ART9),
    Kind("union_membership", SPECIAL, "trade-union membership", basis=ART9),
    Kind("genetic_biometric", SPECIAL, "genetic or biometric data", hipaa="P", basis=ART9),
    Kind("health", SPECIAL, "data concerning health", basis=ART9),
    Kind("sexual_orientation", SPECIAL, "sex life or sexual orientation", basis=ART9),
    Kind("sex", SPECIAL, "sex or gender", basis=PROTECTED),
    Kind("marital_status", SPECIAL, "marital status", basis=PROTECTED),
    Kind("relationship", SPECIAL, "family relationship (household role)", basis=PROTECTED),
    Kind("national_origin", SPECIAL, "national origin", basis=PROTECTED),
]
KINDS: dict[tuple[str, str], Kind] = {(k.category, k.name): k for k in _KINDS + _SPECIAL}

# The value detectors' kinds (ppmlops.risk.detectors) -> category.
VALUE_KIND_CATEGORY = {
    "email": DIRECT, "iban": DIRECT, "credit_card": DIRECT, "ssn": DIRECT, "ipv4": DIRECT,
    "ipv6": DIRECT, "phone": DIRECT, "address": DIRECT, "name": DIRECT,
    "date": QUASI, "postal_code": QUASI,
}


def kind_info(category: str, kind: str) -> Kind:
    return KINDS.get((category, kind)) or Kind(kind, category, kind.replace("_", " "))


# ---------------------------------------------------------------------------------------------- column names

# (kind, category, pattern over the normalized column name: lower case, runs of other characters
# replaced by "_"). Within a category the first match wins; a column may match in several
# categories (sex is a quasi-identifier and a protected characteristic).
NAME_RULES: list[tuple[str, str, str]] = [
    ("email", DIRECT, r"(^|_)(e_?mail|mail)(_?address|_?addr)?($|_)"),
    ("ip_address", DIRECT, r"(^|_)(ip|ipv4|ipv6|ip_?addr(ess)?)($|_)"),
    ("fax", DIRECT, r"(^|_)fax(_?(number|no|nr))?($|_)"),
    ("phone", DIRECT, r"(^|_)(phone|telephone|tel|mobile|cell_?phone|msisdn)(_?(number|no|nr))?($|_)|^(cell|tel_no)$"),
    ("ssn", DIRECT, r"(^|_)(ssn|social_security(_number|_no)?|national_id|national_insurance(_number)?|nino|"
                    r"tax_id|tin|sin|bsn|personnummer|steuer_?id|codice_fiscale|nif|aadhaar|personal_number)($|_)"),
    ("license", DIRECT, r"(^|_)(passport(_number|_no)?|driver_?s?_licen[cs]e(_number|_no)?|licen[cs]e_(number|no)|"
                        r"id_card(_number)?)($|_)"),
    ("credit_card", DIRECT, r"(^|_)(credit_?card(_number|_no)?|card_?(number|no|num)|cc_?(number|num|no)|pan)($|_)"),
    ("iban", DIRECT, r"(^|_)(iban|bic_iban|bank_account(_number)?)($|_)"),
    ("account_number", DIRECT, r"(^|_)(account_?(number|no|nr|num))($|_)"),
    ("medical_record_number", DIRECT, r"(^|_)(mrn|medical_record(_number|_no)?|patient_number)($|_)"),
    ("health_plan_id", DIRECT, r"(^|_)(health_plan(_id|_number)?|insurance_(id|number|no)|member_number|"
                               r"beneficiary_(id|number))($|_)"),
    ("vehicle_id", DIRECT, r"(^|_)(vin|licen[cs]e_plate|number_plate|plate_number|vehicle_id)($|_)"),
    ("device_id", DIRECT, r"(^|_)(device_id|imei|udid|idfa|advertising_id|mac_address|serial_number)($|_)"),
    ("url", DIRECT, r"(^|_)(url|website|homepage|profile_url|linkedin|twitter|facebook)($|_)"),
    ("photo", DIRECT, r"(^|_)(photo|face_image|portrait|selfie|headshot)($|_)"),
    ("name", DIRECT, r"^((first|last|full|given|family|middle|maiden|user|customer|patient|client|contact|"
                     r"person|holder|account_holder|card_holder|employee|member)_?)?name$|^(surname|forename|"
                     r"firstname|lastname|fullname)$"),
    ("address", DIRECT, r"(^|_)(street|address|addr|street_address|home_address|address_line_?\d?)($|_)"),
    ("record_id", DIRECT, r"^(customer|client|patient|member|account|user|employee|person|subscriber|policy|"
                          r"claim|student|voter|citizen)_?(id|number|no|nr|uuid|key)$"),
    ("postal_code", QUASI, r"(^|_)(zip\d?|zipcode|zip_code|postal|postal_code|postalcode|postcode|post_code|plz|"
                           r"cep|cp|code_postal|codigo_postal|postleitzahl|pincode|pin_code|postnummer|postnr)($|_)"),
    ("birth_date", QUASI, r"(^|_)(dob|birthdate|birth_date|date_of_birth|birth_year|year_of_birth|birthday)($|_)"),
    ("age", QUASI, r"^(age|age_years|age_group|age_band|age_at_\w+)$"),
    ("sex", QUASI, r"^(sex|gender)$"),
    ("race", QUASI, r"(^|_)(race|ethnicity|ethnic_group)($|_)"),
    ("national_origin", QUASI, r"(^|_)(native_country|country_of_birth|birth_country|nationality|citizenship)($|_)"),
    ("location", QUASI, r"^(city|town|county|municipality|district|village|neighbo(u)?rhood|geo_?hash|"
                        r"latitude|longitude|lat|lon|lng)$"),
    ("race", SPECIAL, r"(^|_)(race|racial|ethnicity|ethnic|ethnic_group)($|_)"),
    ("sex", SPECIAL, r"^(sex|gender|gender_identity)$"),
    ("sexual_orientation", SPECIAL, r"(^|_)(sexual_orientation|sexuality|sex_life)($|_)"),
    ("religion", SPECIAL, r"(^|_)(religion|religious|faith|belief|beliefs|denomination)($|_)"),
    ("health", SPECIAL, r"(^|_)(health|diagnosis|diagnoses|disease|disability|medical|icd\d*|medication|"
                        r"prescription|pregnancy|pregnant|hiv|symptoms?|(medical|health|chronic|"
                        r"pre_existing)_condition|dx\d*|diag\d*|cpt\d*|hcpcs|procedure|proc_code|px\d*|ndc|"
                        r"drug|drug_code|rx|rx_code)($|_)"),
    ("political_opinion", SPECIAL, r"(^|_)(political|politics|party_affiliation|voting_intention)($|_)"),
    ("union_membership", SPECIAL, r"(^|_)(union|trade_union|union_member(ship)?)($|_)"),
    ("marital_status", SPECIAL, r"(^|_)(marital|marital_status|civil_status)($|_)"),
    ("relationship", SPECIAL, r"^(relationship|household_relationship|relationship_to_head)$"),
    ("national_origin", SPECIAL, r"(^|_)(native_country|country_of_birth|birth_country|nationality|citizenship|"
                                 r"national_origin)($|_)"),
    ("genetic_biometric", SPECIAL, r"(^|_)(genetic|genome|genotype|dna|biometric|fingerprint|iris_scan|"
                                   r"voice_print|face_template)($|_)"),
]
_NAME_RULES_RX = [(kind, cat, re.compile(rx)) for kind, cat, rx in NAME_RULES]


def normalize(column: str) -> str:
    """lower case, runs of anything but letters and digits as "_", camelCase split: "DateOfBirth" -> date_of_birth."""
    split = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", column)
    return re.sub(r"[^a-z0-9]+", "_", split.lower()).strip("_")


def name_matches(column: str) -> dict[str, str]:
    """category -> kind for what the column's name says (first rule per category)."""
    name = normalize(column)
    out: dict[str, str] = {}
    for kind, category, rx in _NAME_RULES_RX:
        if category not in out and rx.search(name):
            out[category] = kind
    return out


def name_hints(column: str) -> frozenset[str]:
    """What the name lets the value detectors accept that they would not otherwise (see detectors.classify)."""
    name = normalize(column)
    hints = set()
    direct = name_matches(column).get(DIRECT)
    if direct == "ssn":
        hints.add("ssn")
    if name_matches(column).get(QUASI) == "postal_code":
        hints.add("postal")
    if re.search(r"(^|_)(dx\d*|diag\d*|diagnosis|diagnoses|icd\d*|icd_?\d*_?codes?|condition_code)($|_)", name):
        hints.add("diagnosis")
    if re.search(r"(^|_)(cpt\d*|hcpcs|procedure|procedures|proc|proc_code|px\d*)($|_)", name):
        hints.add("procedure")
    if re.search(r"(^|_)(ndc|drug|drug_code|rx|rx_code|medication|medication_code)($|_)", name):
        hints.add("drug")
    if re.search(r"(^|_)(first|given|fore)_?name$|^(firstname|forename)$", name):
        hints.add("given")
    elif re.search(r"(^|_)(last|family|sur|maiden)_?name$|^(surname|lastname)$", name):
        hints.add("family")
    elif direct == "name":
        hints.add("full")
    return frozenset(hints)


# Columns that look like a consent flag (ppmlops risk scan points them out when the spec or the
# command line declares no consent column).
_CONSENT_NAME = re.compile(
    r"(^|_)(consent\w*|consented|opt_?in|opted_?in|gdpr(_\w+)?|agreed?_(to_)?terms|accepted_terms|terms_accepted|"
    r"tos_accepted|accepts?_terms|permission(_to_\w+)?|allow_(contact|marketing|research|processing)|"
    r"marketing_(consent|opt_?in|ok|allowed)|data_sharing(_ok|_allowed)?|research_ok|can_contact)($|_)")


def looks_like_consent(column: str) -> bool:
    return _CONSENT_NAME.search(normalize(column)) is not None


def names_birth_date(column: str) -> bool:
    return name_matches(column).get(QUASI) == "birth_date"
