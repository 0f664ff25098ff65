"""Value detectors: does one value, or some span of a free text, look like personal data?

Each detector pairs a pattern with the validity rule that the real thing obeys, because the
pattern alone fires on order numbers, amounts and dates:

  email         local@domain.tld; dot rules of RFC 5321, a letters-only top-level domain
  phone         international (+CC ..., 7-15 digits, ITU E.164) or national: North American
                (NXX) NXX-XXXX with area and exchange codes not starting with 0 or 1, or a
                trunk-prefix number (0...) of 9-11 digits written with separators; dates,
                ZIP+4 codes, decimal numbers and bare digit runs are not phones
  ssn           US social security number AAA-GG-SSSS (dashes or spaces), never issued: area
                000, 666 or 900-999, group 00, serial 0000, the advertising numbers 078-05-1120
                and 219-09-9999; nine bare digits only where the column name says SSN
  credit_card   13-19 digits (consistent separators) with an issuer prefix (Visa, Mastercard,
                Amex, Discover, JCB, Diners, UnionPay, Maestro) and a valid Luhn check digit
  iban          country code, check digits, the country's registered length and mod-97 == 1
                (ISO 13616)
  ipv4, ipv6    parsed by `ipaddress`; no leading zeros in IPv4 octets; unspecified, loopback,
                multicast and broadcast addresses identify no one and are ignored
  date          a real calendar date between 1900 and 2100 written as YYYY-MM-DD (optionally
                with a time), YYYY/MM/DD, DD/MM/YYYY or MM/DD/YYYY (also with . or -), or with
                a month name; eight bare digits and month/year alone are not dates. Whether a
                date column holds dates of birth is decided per column (see classify)
  postal_code   formats that cannot be mistaken for a number: US ZIP+4, UK, Canadian and Dutch
                postcodes; a plain 4-6 digit code only where the column name says postal code
  name          a given name from a list of common names (ppmlops.risk.vocabulary) followed by
                a capitalised surname, "Surname, Given", or a title (Mr, Dr, ...) and a name;
                a single word only where the column name says first or last name
  address       a house number, a capitalised street name and a street type (Street, Ave,
                Road, ...), or a German/Dutch street (...strasse 12)

Coded health data (GDPR Art. 9 data concerning health), by `health_code(value, hints)`:

  icd10         ICD-10(-CM) diagnosis: letter (not U), digit, digit or A/B, then a dot and 1-4
                characters (E11.9, S72.001A); the undotted form (I10, E119) only where the column
                name says diagnosis (dx, diag, icd, ...): alone it is any short product code
  icd9          ICD-9-CM: V and E codes with their dot (V45.81, E880.9); NNN.NN (250.00) only
                under a diagnosis name, as a bare decimal is an amount
  cpt           CPT category II/III (1234F, 0075T) by value; five bare digits (99213) and HCPCS
                level II (J1100) only where the name says procedure (cpt, hcpcs, proc, ...): a
                bare 5-digit number is as likely a postal code, a count or an id
  ndc           National Drug Code with its dashes (4-4-2, 5-3-2, 5-4-1, 5-4-2); 10-11 bare
                digits only where the name says drug (ndc, drug, rx, medication code)

`classify(value)` applies them in that priority order to a whole structured value; `find(text)`
searches a free text and lets a span claimed by a stronger detector (an IBAN, a card) hide the
weaker patterns inside it (the phone-like digit groups of a card number).
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from datetime import date
from typing import Callable, Iterator

from ppmlops.risk.vocabulary import FAMILY_FIRST_SURNAMES, GIVEN_NAMES, NOT_SURNAMES, TITLES

# Kinds in the order they are tried: the most specific, checksum-backed first.
KINDS = ("email", "iban", "credit_card", "ssn", "ipv4", "ipv6", "date", "postal_code", "phone", "address", "name")

# ---------------------------------------------------------------------------------------------- email

# ASCII atoms of RFC 5322 or any letters and digits (RFC 6531 internationalized addresses).
_EMAIL_ATOM = r"[\w!#$%&'*+/=?^`{|}~-]+"
_EMAIL_CORE = (rf"{_EMAIL_ATOM}(?:\.{_EMAIL_ATOM})*"
               r"@(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_]{2,24}")
_EMAIL_FULL = re.compile(_EMAIL_CORE)
_EMAIL_SEARCH = re.compile(r"(?<![\w.!#$%&'*+/=?^`{|}~-])" + _EMAIL_CORE + r"(?![\w-])")


def is_email(value: str) -> bool:
    return len(value) <= 254 and _EMAIL_FULL.fullmatch(value) is not None and len(value.partition("@")[0]) <= 64


# ---------------------------------------------------------------------------------------------- checksums


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def _card_issuer(digits: str) -> str | None:
    n, p2, p3, p4, p6 = len(digits), int(digits[:2]), int(digits[:3]), int(digits[:4]), int(digits[:6])
    if digits[0] == "4" and n in (13, 16, 19):
        return "visa"
    if (51 <= p2 <= 55 or 2221 <= p4 <= 2720) and n == 16:
        return "mastercard"
    if p2 in (34, 37) and n == 15:
        return "amex"
    if (p4 == 6011 or 644 <= p3 <= 649 or p2 == 65 or 622126 <= p6 <= 622925) and 16 <= n <= 19:
        return "discover"
    if 3528 <= p4 <= 3589 and 16 <= n <= 19:
        return "jcb"
    if (300 <= p3 <= 305 or p2 in (36, 38, 39)) and 14 <= n <= 19:
        return "diners"
    if p2 == 62 and 16 <= n <= 19:
        return "unionpay"
    if (p2 == 50 or 56 <= p2 <= 69) and 12 <= n <= 19:
        return "maestro"
    return None


_CARD_SHAPE = re.compile(r"\d(?:[ -]?\d){11,18}")
_CARD_SEARCH = re.compile(r"(?<![\w-])\d(?:[ -]?\d){11,18}(?![\w-])")


def is_credit_card(value: str) -> bool:
    if not _CARD_SHAPE.fullmatch(value):
        return False
    seps = set(re.sub(r"\d", "", value))
    if len(seps) > 1:
        return False
    if seps:
        # Printed card numbers are grouped in fours (Amex 4-6-5); anything else is another number.
        groups = [len(g) for g in re.split(r"[ -]", value)]
        if groups[:-1] != [4] * (len(groups) - 1) and groups != [4, 6, 5] and groups != [4, 6, 4]:
            return False
    digits = re.sub(r"\D", "", value)
    return _card_issuer(digits) is not None and luhn_ok(digits)


# ISO 13616 registry: country -> IBAN length.
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}
_IBAN_SHAPE = re.compile(r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}")
_IBAN_SEARCH = re.compile(r"(?<![\w])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![\w])")


def iban_ok(compact: str) -> bool:
    if IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def is_iban(value: str) -> bool:
    value = value.upper()
    return _IBAN_SHAPE.fullmatch(value) is not None and iban_ok(value.replace(" ", ""))


# ---------------------------------------------------------------------------------------------- SSN

_SSN_SHAPE = re.compile(r"(\d{3})([- ])(\d{2})\2(\d{4})")
_SSN_BARE = re.compile(r"(\d{3})(\d{2})(\d{4})")
_SSN_SEARCH = re.compile(r"(?<![\w-])\d{3}(?P<ssn_sep>[- ])\d{2}(?P=ssn_sep)\d{4}(?![\w-])")
_SSN_NEVER_ISSUED = {("078", "05", "1120"), ("219", "09", "9999")}


def ssn_parts_ok(area: str, group: str, serial: str) -> bool:
    return (area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"
            and (area, group, serial) not in _SSN_NEVER_ISSUED)


def is_ssn(value: str, bare: bool = False) -> bool:
    m = _SSN_SHAPE.fullmatch(value)
    if m:
        return ssn_parts_ok(m.group(1), m.group(3), m.group(4))
    m = _SSN_BARE.fullmatch(value) if bare else None
    return bool(m) and ssn_parts_ok(*m.groups())


# ---------------------------------------------------------------------------------------------- IP


_IPV4_SEARCH = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\w)")
_IPV6_SEARCH = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])")


def _ip_identifies(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if addr.is_unspecified or addr.is_loopback or addr.is_multicast:
        return False
    return not (isinstance(addr, ipaddress.IPv4Address) and int(addr) == 0xFFFFFFFF)


def is_ipv4(value: str) -> bool:
    parts = value.split(".")
    if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 and (p == "0" or p[0] != "0") for p in parts):
        return False
    if not all(int(p) <= 255 for p in parts):
        return False
    return _ip_identifies(ipaddress.IPv4Address(value))


def is_ipv6(value: str) -> bool:
    if value.count(":") < 2 or not re.fullmatch(r"[0-9A-Fa-f:.]+", value):
        return False
    groups = [g for g in re.split(r"::?", value) if g]
    # "d::" or "ab::cd" in prose (std::vector, a::b) parse as IPv6; a real address has more to it.
    if len(groups) < 2 or sum(len(g) for g in groups) < 5:
        return False
    try:
        addr = ipaddress.IPv6Address(value)
    except ValueError:
        return False
    return _ip_identifies(addr)


# ---------------------------------------------------------------------------------------------- dates

_MONTHS = {m: i + 1 for i, m in enumerate(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"])}
_MONTH_RX = r"(jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
_TIME = r"(?:[T ]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?"
_DATE_FORMS = [
    ("ymd", re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})" + _TIME)),
    ("ymd", re.compile(r"(\d{4})([/.])(\d{1,2})\2(\d{1,2})")),
    ("ambiguous", re.compile(r"(\d{1,2})([/.-])(\d{1,2})\2(\d{4})")),
    ("dmy_name", re.compile(r"(\d{1,2})(?:st|nd|rd|th)?[ -]" + _MONTH_RX + r"[ ,-]+(\d{4})", re.I)),
    ("mdy_name", re.compile(_MONTH_RX + r" (\d{1,2})(?:st|nd|rd|th)?,? (\d{4})", re.I)),
]
_DATE_SEARCH = re.compile(
    r"(?<![\w/.:-])(?:\d{4}-\d{1,2}-\d{1,2}(?:T\d{2}:\d{2}(?::\d{2})?)?|\d{4}[/.]\d{1,2}[/.]\d{1,2}|"
    r"\d{1,2}(?P<date_sep>[/.-])\d{1,2}(?P=date_sep)\d{4}|\d{1,2}(?:st|nd|rd|th)?[ -]" + _MONTH_RX + r"[ ,-]+\d{4}|"
    + _MONTH_RX + r" \d{1,2}(?:st|nd|rd|th)?,? \d{4})(?![\w/:-]|\.\d)", re.I)


def _real_date(y: int, m: int, d: int) -> date | None:
    if not 1900 <= y <= 2100:
        return None
    try:
        return date(y, m, d)
    except ValueError:
        return None


def parse_date(value: str) -> date | None:
    """The calendar date `value` spells, or None. For DD/MM vs MM/DD, the reading that is a real
    date wins; where both are, day first (the value is a date either way)."""
    for form, rx in _DATE_FORMS:
        m = rx.fullmatch(value)
        if not m:
            continue
        if form == "ymd":
            g = [x for x in m.groups() if x and x.isdigit()]
            return _real_date(int(g[0]), int(g[1]), int(g[2]))
        if form == "ambiguous":
            a, b, y = int(m.group(1)), int(m.group(3)), int(m.group(4))
            return _real_date(y, b, a) or _real_date(y, a, b)
        if form == "dmy_name":
            return _real_date(int(m.group(3)), _MONTHS[m.group(2).lower()[:3]], int(m.group(1)))
        return _real_date(int(m.group(3)), _MONTHS[m.group(1).lower()[:3]], int(m.group(2)))
    return None


# ---------------------------------------------------------------------------------------------- postal codes

_POSTAL_DISTINCT = [
    re.compile(r"\d{5}-\d{4}"),  # US ZIP+4
    re.compile(r"(?:GIR ?0AA|[A-PR-UWYZ](?:\d[A-HJKPSTUW\d]?|[A-HK-Y]\d[ABEHMNPRVWXY\d]?) ?\d[ABD-HJLNP-UW-Z]{2})"),  # UK
    re.compile(r"[ABCEGHJ-NPRSTVXY]\d[ABCEGHJ-NPRSTV-Z] ?\d[ABCEGHJ-NPRSTV-Z]\d"),  # Canada
    re.compile(r"[1-9]\d{3} (?!SA|SD|SS)[A-Z]{2}"),  # Netherlands
]
_POSTAL_HINTED = re.compile(r"\d{4,6}|\d{5}-\d{4}|\d{5}-\d{3}|\d{3}-\d{4}|\d{2}-\d{3}|[A-Z0-9]{2,4} ?[A-Z0-9]{3}", re.I)
_POSTAL_SEARCH = re.compile(
    r"(?<![\w-])(?:\d{5}-\d{4}|[A-PR-UWYZ](?:\d[A-HJKPSTUW\d]?|[A-HK-Y]\d[ABEHMNPRVWXY\d]?) \d[ABD-HJLNP-UW-Z]{2}|"
    r"[ABCEGHJ-NPRSTVXY]\d[ABCEGHJ-NPRSTV-Z] \d[ABCEGHJ-NPRSTV-Z]\d)(?![\w-])")


def is_postal_code(value: str, hinted: bool = False) -> bool:
    if any(rx.fullmatch(value) for rx in _POSTAL_DISTINCT):
        return True
    return hinted and _POSTAL_HINTED.fullmatch(value) is not None


# ---------------------------------------------------------------------------------------------- health codes

HEALTH_CODE_KINDS = ("icd10", "icd9", "cpt", "ndc")
_ICD10_DOTTED = re.compile(r"[A-TV-Z]\d[0-9AB]\.[0-9A-TV-Z]{1,4}")
_ICD10_BARE = re.compile(r"[A-TV-Z]\d[0-9AB][0-9A-TV-Z]{0,4}")
_ICD9_DOTTED = re.compile(r"V\d{2}\.\d{1,2}|E\d{3}\.\d")
_ICD9_HINTED = re.compile(r"\d{3}(?:\.\d{1,2})?|V\d{2}(?:\.?\d{1,2})?|E\d{3}(?:\.?\d)?")
_CPT_DISTINCT = re.compile(r"\d{4}[FT]")
_CPT_HINTED = re.compile(r"\d{5}|\d{4}[FTU]|[A-CEGHJ-MP-V]\d{4}")
_NDC_DASHED = re.compile(r"\d{4}-\d{4}-\d{2}|\d{5}-\d{3}-\d{2}|\d{5}-\d{4}-\d{1,2}")
_NDC_HINTED = re.compile(r"\d{10,11}")


def health_code(value: str, hints: frozenset[str] = frozenset()) -> str | None:
    """The kind of medical code one value is (icd10, icd9, cpt, ndc), or None.

    `hints` from the column name (ppmlops.risk.categories.name_hints): 'diagnosis' admits
    undotted ICD-10 and bare ICD-9 codes, 'procedure' five-digit CPT and HCPCS codes, 'drug'
    undashed NDCs.
    """
    value = value.strip().upper() if "diagnosis" in hints or "procedure" in hints else value.strip()
    if not value or len(value) > 13:
        return None
    if _ICD10_DOTTED.fullmatch(value):
        return "icd10"
    if _ICD9_DOTTED.fullmatch(value):
        return "icd9"
    if _NDC_DASHED.fullmatch(value):
        return "ndc"
    if _CPT_DISTINCT.fullmatch(value):
        return "cpt"
    if "diagnosis" in hints:
        if _ICD9_HINTED.fullmatch(value) and not _ICD10_BARE.fullmatch(value):
            return "icd9"
        if _ICD10_BARE.fullmatch(value):
            return "icd10"
    if "procedure" in hints and _CPT_HINTED.fullmatch(value):
        return "cpt"
    if "drug" in hints and _NDC_HINTED.fullmatch(value):
        return "ndc"
    return None


# ---------------------------------------------------------------------------------------------- phone

_PHONE_CHARS = re.compile(r"\+?[\d(][\d\s().\-/]{5,22}\d")
_PHONE_SEARCH = re.compile(r"(?<![\w+.-])(?:\(\+\d{1,3}\) ?|\+|00)?\(?\d[\d\s().\-/]{5,22}\d(?![\w-]|\.\d)")
# CIS national format: trunk prefix 8, area code in brackets, 10 digits after the 8.
_TRUNK_8 = re.compile(r"8 ?\(\d{3,5}\) ?\d{1,3}(?:[ -]?\d{2}){2,3}")
_DATE_LIKE = re.compile(r"\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}")
_NANP = re.compile(r"(?:\+?1[\s.-]?)?(?:\(([2-9]\d{2})\)\s?|([2-9]\d{2})([\s.-]))([2-9]\d{2})[\s.-](\d{4})")


def is_phone(value: str) -> bool:
    value = value.strip()
    m = re.fullmatch(r"\(\+(\d{1,3})\)(.*)", value)
    if m:  # "(+44) 20 7946 0958": the country code in brackets
        value = f"+{m.group(1)}{m.group(2)}"
    if not _PHONE_CHARS.fullmatch(value) or _DATE_LIKE.fullmatch(value) or re.fullmatch(r"\d{5}-\d{4}", value):
        return False
    if _SSN_SHAPE.fullmatch(value):  # SSN-shaped but never issued is a placeholder, not a phone
        return False
    if value.count("(") != value.count(")") or re.search(r"[\s.\-/]{2,}", value.replace(") ", ")")):
        return False
    m = _NANP.fullmatch(value)
    if m:
        # one separator style inside the number (415-555.0132 is two numbers glued, not one)
        return m.group(3) is None or m.group(3) == value[m.end(4):m.start(5)]
    international = value.startswith("+") or value.startswith("00")
    body = value[1:] if value.startswith("+") else value[2:] if international else value
    body = body.replace("(0)", "", 1)  # "+44 (0)20 ...": the national trunk prefix in brackets
    digits = re.sub(r"\D", "", body)
    if international:
        return digits[:1] != "0" and 7 <= len(digits) <= 15 and bool(re.search(r"[\s.\-/()]", body) or len(digits) >= 10)
    if _TRUNK_8.fullmatch(value):
        return len(digits) == 11
    # National numbers outside North America are written with a trunk prefix 0 and grouped.
    has_separator = bool(re.search(r"[\s\-/()]", value))
    return value.startswith(("0", "(0")) and 9 <= len(digits) <= 11 and has_separator and digits[1:2] != "0"


# ---------------------------------------------------------------------------------------------- names, addresses

_UPPER, _LOWER = "A-ZÀ-ÖØ-ÞĀ-Ž", "a-zß-öø-ÿā-ž"
# A capitalised word, with the prefixes and joins of real surnames: O'Brien, McDonald, Anna-Lena.
_WORD = rf"(?:[{_UPPER}]['’])?[{_UPPER}][{_LOWER}]+(?:[{_UPPER}][{_LOWER}]+)?(?:[-'’][{_UPPER}]?[{_LOWER}]+)?"
_NAME_GIVEN_FIRST = re.compile(rf"({_WORD})(?: [{_UPPER}]\.?| {_WORD})? ({_WORD})")
_NAME_SURNAME_FIRST = re.compile(rf"({_WORD}), ({_WORD})(?: [{_UPPER}]\.?)?")
_NAME_TITLED = re.compile(rf"(?:Mr|Mrs|Ms|Miss|Dr|Prof|Sir|Herr|Frau)\.? (?:{_WORD} )?({_WORD})")
# Not followed by a word that makes the pair an organisation or a place ("Thomas Cook Group").
_NOT_NAME_NEXT = r"(?! (?:" + "|".join(sorted(w.capitalize() for w in NOT_SURNAMES)) + r")\b)"
_NAME_SEARCH = re.compile(
    rf"(?<![\w])(?:(?:Mr|Mrs|Ms|Miss|Dr|Prof|Herr|Frau)\.? (?:{_WORD} )?{_WORD}|{_WORD}(?: [{_UPPER}]\.)? {_WORD})"
    rf"(?![\w]){_NOT_NAME_NEXT}")
_SINGLE_NAME = re.compile(rf"{_WORD}(?: {_WORD})?")

_STREET_TYPES = (r"street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|way|place|pl|terrace|"
                 r"crescent|close|square|sq|highway|hwy|parkway|pkwy|loop|alley|row")
# Street names must be capitalised (case-insensitive matching would read "3 items in place" as
# an address); only the street type may be written in any case.
_ADDRESS = re.compile(
    rf"\d{{1,5}}[A-Za-z]? (?:[NSEW]\.? )?(?:(?:[A-Z][a-z]+|\d{{1,3}}(?:st|nd|rd|th)) ){{1,3}}(?i:{_STREET_TYPES})\.?"
    rf"(?:,? (?i:apt|suite|unit|#)\.? ?\w+)?"
    rf"|[A-ZÄÖÜ][a-zäöüß]+(?:stra(?:ss|ß)e|str\.|weg|gasse|platz|allee|straat|laan|gracht) \d{{1,4}}[a-z]?")
_ADDRESS_SEARCH = re.compile(r"(?<![\w])(?:" + _ADDRESS.pattern + r")(?![\w])")


_FOLD = str.maketrans({"ø": "o", "æ": "ae", "œ": "oe", "ß": "ss", "đ": "d", "ł": "l", "ı": "i", "þ": "th", "ð": "d"})


def fold(word: str) -> str:
    """Lower case without diacritics, so Ólafur and Bjørn meet olafur and bjorn in the list."""
    decomposed = unicodedata.normalize("NFKD", word.lower().translate(_FOLD))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _given(word: str) -> bool:
    word = fold(word)
    return word in GIVEN_NAMES or re.split(r"[-'’]", word)[0] in GIVEN_NAMES  # Jean-Pierre, Anna-Lena


def is_person_name(value: str, hint: str | None = None) -> bool:
    """A person's name. `hint` is the column name's say: 'given' (first-name column), 'family'
    (surname column), 'full' (a name column); a single word counts only under a hint."""
    m = _NAME_TITLED.fullmatch(value)
    if m:
        return m.group(1).lower() not in NOT_SURNAMES
    m = _NAME_GIVEN_FIRST.fullmatch(value)
    if m and _given(m.group(1)) and m.group(2).lower() not in NOT_SURNAMES:
        return True
    m = _NAME_SURNAME_FIRST.fullmatch(value)
    if m and _given(m.group(2)) and m.group(1).lower() not in NOT_SURNAMES:
        return True
    # East Asian order, family name first: Nguyen Van An, Wang Xiu Ying.
    words = value.split()
    if 2 <= len(words) <= 3 and fold(words[0]) in FAMILY_FIRST_SURNAMES and all(
            re.fullmatch(_WORD, w) for w in words) and words[-1].lower() not in NOT_SURNAMES:
        return True
    if hint == "given":
        return _given(value) or _SINGLE_NAME.fullmatch(value) is not None
    if hint == "family":
        return _SINGLE_NAME.fullmatch(value) is not None and value.lower() not in NOT_SURNAMES
    if hint == "full":
        return m is not None or bool(_NAME_GIVEN_FIRST.fullmatch(value))
    return False


def is_address(value: str) -> bool:
    return _ADDRESS.fullmatch(value) is not None


# ---------------------------------------------------------------------------------------------- whole values

_HAS_DIGIT = re.compile(r"\d")


def classify(value: str, hints: frozenset[str] = frozenset()) -> str | None:
    """The kind of personal data one structured value is, or None.

    `hints` are what the column name suggests (see ppmlops.risk.categories.name_hints): 'ssn'
    admits nine bare digits, 'postal' plain numeric postcodes, 'given'/'family'/'full' names.
    """
    value = value.strip()
    if not value or len(value) > 320:
        return None
    if "@" in value:
        return "email" if is_email(value) else None
    if _HAS_DIGIT.search(value):
        if is_iban(value):
            return "iban"
        if is_credit_card(value):
            return "credit_card"
        if is_ssn(value, bare="ssn" in hints):
            return "ssn"
        if is_ipv4(value):
            return "ipv4"
        if ":" in value and is_ipv6(value):
            return "ipv6"
        if parse_date(value) is not None:
            return "date"
        if is_postal_code(value, hinted="postal" in hints):
            return "postal_code"
        if _NDC_DASHED.fullmatch(value):
            return None  # a drug code (health_code), whose 0-led digit groups read like a trunk-prefix phone
        if is_phone(value):
            return "phone"
        if is_address(value):
            return "address"
        return None
    name_hint = next((h for h in ("given", "family", "full") if h in hints), None)
    if is_person_name(value, name_hint):
        return "name"
    if is_address(value):
        return "address"
    return None


# ---------------------------------------------------------------------------------------------- free text


def _searchers() -> list[tuple[str, re.Pattern[str], Callable[[str], bool]]]:
    def name_ok(span: str) -> bool:
        words = span.replace(".", "").split()
        if words[0].lower() in TITLES:
            return len(words) > 1 and words[-1].lower() not in NOT_SURNAMES
        return is_person_name(span)

    searchers = [
        ("email", _EMAIL_SEARCH, is_email),
        ("iban", _IBAN_SEARCH, is_iban),
        ("credit_card", _CARD_SEARCH, is_credit_card),
        ("ssn", _SSN_SEARCH, is_ssn),
        ("ipv4", _IPV4_SEARCH, is_ipv4),
        ("ipv6", _IPV6_SEARCH, is_ipv6),
        ("date", _DATE_SEARCH, lambda s: parse_date(s) is not None),
        ("postal_code", _POSTAL_SEARCH, is_postal_code),
        ("phone", _PHONE_SEARCH, is_phone),
        ("address", _ADDRESS_SEARCH, is_address),
        ("name", _NAME_SEARCH, name_ok),
    ]
    # A lookahead finds a candidate at every start position, so "Dear John Smith" still yields
    # "John Smith" after "Dear John" was tried and rejected.
    return [(kind, re.compile(f"(?=({rx.pattern}))", rx.flags), ok) for kind, rx, ok in searchers]


_SEARCHERS = _searchers()


def _shorter(span: str) -> Iterator[str]:
    """The span, then the span cut at each space from the right: "4111 1111 1111 1111 12" holds a
    card number followed by something else, which a greedy pattern took along."""
    yield span
    while " " in span:
        span = span[: span.rindex(" ")].rstrip(" .,")
        yield span


def find(text: str) -> Iterator[tuple[str, str]]:
    """(kind, span) for every piece of personal data in a free text, stronger kinds first; a
    span that overlaps one already claimed is not reported again."""
    claimed: list[tuple[int, int]] = []
    for kind, rx, ok in _SEARCHERS:
        for m in rx.finditer(text):
            start = m.start(1)
            for span in _shorter(m.group(1).rstrip(" .,")):
                end = start + len(span)
                if any(s < end and start < e for s, e in claimed):
                    break
                if ok(span):
                    claimed.append((start, end))
                    yield kind, span
                    break
