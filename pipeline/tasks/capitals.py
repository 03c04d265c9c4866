"""Capitals of well-known countries: a small knowledge task with exact labels, checked by the label verifier.

It measures forgetting: a student trained on arithmetic should still know that Paris is the capital of
France. Each row's ``meta.labels`` lists every capital of the task, so the label verifier accepts an answer
that names the right capital ("The capital of France is Paris.") and rejects one that names another.
Splits are disjoint by a hash of the country (train 25%, validation 25%, test 50%), so the test split is
large enough (about 60 countries) to measure retention. Wording: prompts/tasks/capitals.jinja.

    python -c "from pipeline.tasks.capitals import load; print(load('test')[0])"
"""

from __future__ import annotations

import hashlib
import json
import random

from pipeline import templates
from pipeline.errors import UserError
from pipeline.tasks.ids import prompt_id

TEMPLATE = "tasks/capitals.jinja"
VERIFIER = "label"
SPLITS = ("train", "validation", "test")

CAPITALS = {
    "Afghanistan": "Kabul",
    "Albania": "Tirana",
    "Algeria": "Algiers",
    "Argentina": "Buenos Aires",
    "Armenia": "Yerevan",
    "Australia": "Canberra",
    "Austria": "Vienna",
    "Azerbaijan": "Baku",
    "Bangladesh": "Dhaka",
    "Belarus": "Minsk",
    "Belgium": "Brussels",
    "Bolivia": "Sucre",
    "Brazil": "Brasilia",
    "Bulgaria": "Sofia",
    "Cambodia": "Phnom Penh",
    "Canada": "Ottawa",
    "Chile": "Santiago",
    "China": "Beijing",
    "Colombia": "Bogota",
    "Costa Rica": "San Jose",
    "Croatia": "Zagreb",
    "Cuba": "Havana",
    "Cyprus": "Nicosia",
    "the Czech Republic": "Prague",
    "Denmark": "Copenhagen",
    "Ecuador": "Quito",
    "Egypt": "Cairo",
    "Estonia": "Tallinn",
    "Ethiopia": "Addis Ababa",
    "Finland": "Helsinki",
    "France": "Paris",
    "Georgia": "Tbilisi",
    "Germany": "Berlin",
    "Ghana": "Accra",
    "Greece": "Athens",
    "Guatemala": "Guatemala City",
    "Hungary": "Budapest",
    "Iceland": "Reykjavik",
    "India": "New Delhi",
    "Indonesia": "Jakarta",
    "Iran": "Tehran",
    "Iraq": "Baghdad",
    "Ireland": "Dublin",
    "Israel": "Jerusalem",
    "Italy": "Rome",
    "Jamaica": "Kingston",
    "Japan": "Tokyo",
    "Jordan": "Amman",
    "Kazakhstan": "Astana",
    "Kenya": "Nairobi",
    "Kuwait": "Kuwait City",
    "Laos": "Vientiane",
    "Latvia": "Riga",
    "Lebanon": "Beirut",
    "Libya": "Tripoli",
    "Lithuania": "Vilnius",
    "Luxembourg": "Luxembourg",
    "Madagascar": "Antananarivo",
    "Malaysia": "Kuala Lumpur",
    "Mali": "Bamako",
    "Malta": "Valletta",
    "Mexico": "Mexico City",
    "Mongolia": "Ulaanbaatar",
    "Morocco": "Rabat",
    "Mozambique": "Maputo",
    "Nepal": "Kathmandu",
    "the Netherlands": "Amsterdam",
    "New Zealand": "Wellington",
    "Nicaragua": "Managua",
    "Niger": "Niamey",
    "Nigeria": "Abuja",
    "North Korea": "Pyongyang",
    "Norway": "Oslo",
    "Oman": "Muscat",
    "Pakistan": "Islamabad",
    "Panama": "Panama City",
    "Paraguay": "Asuncion",
    "Peru": "Lima",
    "the Philippines": "Manila",
    "Poland": "Warsaw",
    "Portugal": "Lisbon",
    "Qatar": "Doha",
    "Romania": "Bucharest",
    "Russia": "Moscow",
    "Rwanda": "Kigali",
    "Saudi Arabia": "Riyadh",
    "Senegal": "Dakar",
    "Serbia": "Belgrade",
    "Singapore": "Singapore",
    "Slovakia": "Bratislava",
    "Slovenia": "Ljubljana",
    "Somalia": "Mogadishu",
    "South Africa": "Pretoria",
    "South Korea": "Seoul",
    "Spain": "Madrid",
    "Sri Lanka": "Colombo",
    "Sudan": "Khartoum",
    "Sweden": "Stockholm",
    "Switzerland": "Bern",
    "Syria": "Damascus",
    "Taiwan": "Taipei",
    "Tanzania": "Dodoma",
    "Thailand": "Bangkok",
    "Tunisia": "Tunis",
    "Turkey": "Ankara",
    "Uganda": "Kampala",
    "Ukraine": "Kyiv",
    "the United Arab Emirates": "Abu Dhabi",
    "the United Kingdom": "London",
    "the United States": "Washington",
    "Uruguay": "Montevideo",
    "Uzbekistan": "Tashkent",
    "Venezuela": "Caracas",
    "Vietnam": "Hanoi",
    "Yemen": "Sanaa",
    "Zambia": "Lusaka",
    "Zimbabwe": "Harare",
}


def _split_of(country: str) -> str:
    bucket = int(hashlib.sha256(country.encode()).hexdigest(), 16) % 4
    return "train" if bucket == 0 else "validation" if bucket == 1 else "test"


def load(split: str = "test", n: int | None = None, seed: int = 0) -> list[dict]:
    """The questions of one split, in a seeded order; ``reference`` is the capital."""
    if split not in SPLITS:
        raise UserError(f"capitals: split '{split}' must be train, validation or test")
    countries = [c for c in CAPITALS if _split_of(c) == split]
    random.Random(f"capitals:{seed}").shuffle(countries)
    labels = sorted(set(CAPITALS.values()))
    rows = []
    for i, country in enumerate(countries[:n]):
        question = templates.render(TEMPLATE, country=country, variant=i)
        rows.append(
            {
                "id": prompt_id("capitals", question),
                "task": "capitals",
                "messages": [{"role": "user", "content": question}],
                "prompt": question,
                "reference": CAPITALS[country],
                "meta": json.dumps({"country": country, "split": split, "labels": labels}),
            }
        )
    return rows
