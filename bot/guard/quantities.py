"""Numbers as quantities, in English and Chinese: what lets "600 yuan" match "600 元", "10 am"
match "10:00", "seven calendar days" match "7 天" and "one week" match "7 days".

A quantity is a value with a unit: a duration (kept in minutes, so that units convert), working
days, months, years, money in yuan, a percentage, a clock time (hours after midnight), a date
(month * 100 + day), a day of the month, a day of the week (Monday 1 to Sunday 7: "every
Tuesday" is "每周二", not "every week" and a 2), or nothing (a bare count). Digits that belong to a
name (SEV1, int8, llama2-7b, v0.6.0, A100-80G) are no quantities: the names check reads them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CN_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
CN_UNITS = {"十": 10, "百": 100, "千": 1000, "万": 10_000}
EN_NUMBERS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
    "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "ninety": 90, "hundred": 100,
    "a": 1, "an": 1, "single": 1, "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
    "eighth": 8, "ninth": 9, "tenth": 10, "twice": 2,
}  # fmt: skip
MINUTES = {"minute": 1, "hour": 60, "day": 1440, "week": 10080}
# Unit words -> (unit, factor): durations become minutes.
EN_UNITS = {
    "minute": ("minutes", 1), "minutes": ("minutes", 1), "min": ("minutes", 1), "mins": ("minutes", 1),
    "hour": ("minutes", 60), "hours": ("minutes", 60), "hr": ("minutes", 60), "hrs": ("minutes", 60),
    "day": ("minutes", 1440), "days": ("minutes", 1440), "calendar day": ("minutes", 1440), "calendar days": ("minutes", 1440),
    "week": ("minutes", 10080), "weeks": ("minutes", 10080),
    "working day": ("workdays", 1), "working days": ("workdays", 1), "business day": ("workdays", 1), "business days": ("workdays", 1),
    "workday": ("workdays", 1), "workdays": ("workdays", 1),
    "month": ("months", 1), "months": ("months", 1), "year": ("years", 1), "years": ("years", 1),
    "yuan": ("yuan", 1), "rmb": ("yuan", 1), "cny": ("yuan", 1), "percent": ("percent", 1), "%": ("percent", 1),
    "times": ("times", 1), "time": ("times", 1),
}  # fmt: skip
ZH_UNITS = {
    "分钟": ("minutes", 1), "分鐘": ("minutes", 1), "小时": ("minutes", 60), "小時": ("minutes", 60), "个小时": ("minutes", 60),
    "钟头": ("minutes", 60), "天": ("minutes", 1440), "周": ("minutes", 10080), "个星期": ("minutes", 10080), "星期": ("minutes", 10080),
    "礼拜": ("minutes", 10080), "个工作日": ("workdays", 1), "工作日": ("workdays", 1), "个月": ("months", 1), "年": ("years", 1),
    "元": ("yuan", 1), "块": ("yuan", 1), "块钱": ("yuan", 1), "人民币": ("yuan", 1), "%": ("percent", 1), "次": ("times", 1),
}  # fmt: skip
MONTHS = {m: k for k, m in enumerate("january february march april may june july august september october november december".split(), start=1)}
MONTHS.update({m[:3]: k for m, k in list(MONTHS.items())})
WEEKDAYS = {d: k for k, d in enumerate(("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"), start=1)}
ZH_WEEKDAYS = {"一": 1, "二": 2, "三": 3, "四": 4, "五": 5, "六": 6, "日": 7, "天": 7}

_CN_NUM = "[零〇一二两三四五六七八九十百千万]+"
_DIGITS = r"\d+(?:,\d{3})*(?:\.\d+)?"
_EN_NUM = "|".join(sorted(EN_NUMBERS, key=len, reverse=True))
_EN_UNIT = "|".join(re.escape(u) for u in sorted(EN_UNITS, key=len, reverse=True))
_ZH_UNIT = "|".join(re.escape(u) for u in sorted(ZH_UNITS, key=len, reverse=True))
_MONTH = "|".join(sorted(MONTHS, key=len, reverse=True))
# Digits that stand alone: not part of a word, a version or a name (SEV1, int8, v0.6.0, A100-80G, llama2-7b).
_ALONE_BEFORE = r"(?<![A-Za-z0-9_.\-/:$])"
_ALONE_AFTER = r"(?![0-9]|\.[0-9]|[A-Za-z_]|-[A-Za-z0-9](?!\w*\s))"

_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("clock_en", re.compile(rf"{_ALONE_BEFORE}(\d{{1,2}})(?::(\d{{2}}))?\s*(a\.?m\.?|p\.?m\.?)(?![A-Za-z])", re.IGNORECASE)),
    ("clock_zh", re.compile(rf"(上午|早上|早晨|中午|下午|晚上)?\s*(\d{{1,2}}|{_CN_NUM})\s*[点點时時](?:\s*(半|(\d{{1,2}}|{_CN_NUM})\s*分?))?")),
    ("clock", re.compile(rf"{_ALONE_BEFORE}(\d{{1,2}}):(\d{{2}})(?![0-9:])")),
    ("noon", re.compile(r"\b(?:noon|midday|midnight)\b|中午(?!\s*(?:\d|[零〇一二两三四五六七八九十]+)\s*[点點])|午夜", re.IGNORECASE)),
    # 周二 is Tuesday, but 一周一次 is "once a week" and 每周一次 "once every week"
    ("weekday_zh", re.compile(r"(?<![一二两三四五六七八九十0-9])(?:每个?)?(?:周|星期|礼拜)([一二三四五六日天])(?![个次周])")),
    ("weekday_en", re.compile(r"\b(monday|tuesday|wednesday|thursday|friday|saturday|sunday)s?\b", re.IGNORECASE)),
    ("every", re.compile(r"\b(?:every|each|per)\s+(minute|hour|day|week|month|year)\b|\b(hourly|daily|weekly|monthly|yearly)\b|(每(?:个)?(?:小时|天|日|周|星期|月|年))", re.IGNORECASE)),
    ("date_en", re.compile(rf"\b({_MONTH})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?\b|\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({_MONTH})\b", re.IGNORECASE)),
    ("date_zh", re.compile(rf"(\d{{1,2}}|{_CN_NUM})\s*月\s*(\d{{1,2}}|{_CN_NUM})\s*[日号]")),
    ("money_prefix", re.compile(rf"(?:RMB|CNY|¥|￥)\s*({_DIGITS})", re.IGNORECASE)),
    ("day_of_month", re.compile(rf"(\d{{1,2}}|{_CN_NUM})\s*[日号](?!本|常|期|志|语|文)|{_ALONE_BEFORE}(\d{{1,2}})(?:st|nd|rd|th)\b", re.IGNORECASE)),
    ("unit_zh", re.compile(rf"(第)?\s*({_DIGITS}|{_CN_NUM})\s*(?:个\s*)?({_ZH_UNIT})")),
    ("unit_en", re.compile(rf"{_ALONE_BEFORE}({_DIGITS}|\b(?:{_EN_NUM}))(?:\s+|-)(?:(?:calendar|working|business|full|whole)\s+)?({_EN_UNIT})\b", re.IGNORECASE)),
    ("percent", re.compile(rf"{_ALONE_BEFORE}({_DIGITS})\s*%")),
    ("number_zh", re.compile(rf"{_CN_NUM}(?=[个位名张条项次])")),
    ("number_en", re.compile(rf"\b({_EN_NUM})\b(?!\s+(?:of|or|and|another|that|who|which|by|at|in|on|to|is|are)\b)(?![-'])", re.IGNORECASE)),
    ("digits", re.compile(rf"{_ALONE_BEFORE}({_DIGITS}){_ALONE_AFTER}")),
]
_WORKING = re.compile(r"working|business|workday", re.IGNORECASE)
_PRONOUN_ONE = re.compile(r"\b(?:the|this|that|any|each|every|no|which|a|another|only)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Quantity:
    value: float
    unit: str  # minutes, workdays, months, years, yuan, percent, times, clock, date, day_of_month, weekday, or "" (a bare number)
    text: str  # as written
    start: int = 0
    end: int = 0
    amount: float = 0.0  # the number as written, before the unit is converted ("six hours": 6)

    def same(self, other: Quantity) -> bool:
        """The same amount: equal values in one unit, or a bare number and any unit."""
        if abs(self.value - other.value) > 1e-6:
            return False
        return self.unit == other.unit or not self.unit or not other.unit or {self.unit, other.unit} <= {"day_of_month", "date"}

    def rival(self, other: Quantity) -> bool:
        """Another amount of the same kind (what a wrong binding puts in this one's place)."""
        return bool(self.unit) and self.unit == other.unit and abs(self.value - other.value) > 1e-6

    def __str__(self) -> str:
        return self.text


def quantities(text: str) -> list[Quantity]:
    """Every quantity in ``text``, in order; each stretch of text is read once (the most specific reading wins)."""
    found: list[Quantity] = []
    taken = [False] * (len(text) + 1)
    for kind, pattern in _PATTERNS:
        for match in pattern.finditer(text):
            start, end = match.span()
            if start == end or any(taken[start:end]):
                continue
            quantity = _read(kind, match)
            if quantity is None:
                continue
            amount = next((v for v in (number(g) for g in match.groups() if g) if v is not None), quantity[0])
            found.append(Quantity(quantity[0], quantity[1], match.group(0).strip(), start, end, amount))
            for k in range(start, end):
                taken[k] = True
    return sorted(found, key=lambda q: q.start)


def _read(kind: str, m: re.Match[str]) -> tuple[float, str] | None:
    if kind == "clock_en":
        hour, minute = int(m.group(1)), int(m.group(2) or 0)
        if not 1 <= hour <= 12:
            return None
        pm = m.group(3).lower().startswith("p")
        return (hour % 12 + 12 * pm) + minute / 60, "clock"
    if kind == "clock_zh":
        hour = number(m.group(2))
        if hour is None or hour > 24 or (m.group(1) is None and m.group(3) is None and not re.search(r"\d|[点點]", m.group(0))):
            return None
        minute = 30 if m.group(3) == "半" else (number(m.group(4)) or 0) if m.group(4) else 0
        if m.group(1) in ("下午", "晚上") and hour < 12:
            hour += 12
        return hour + minute / 60, "clock"
    if kind == "clock":
        hour, minute = int(m.group(1)), int(m.group(2))
        return (hour + minute / 60, "clock") if hour <= 24 and minute < 60 else None
    if kind == "date_en":
        month, day = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
        return MONTHS[month.lower()[:3]] * 100 + int(day), "date"
    if kind == "date_zh":
        month, day = number(m.group(1)), number(m.group(2))
        return (month * 100 + day, "date") if month and day and month <= 12 else None
    if kind == "noon":
        return (0.0 if m.group(0).lower() in ("midnight", "午夜") else 12.0), "clock"
    if kind == "weekday_zh":
        return float(ZH_WEEKDAYS[m.group(1)]), "weekday"
    if kind == "weekday_en":
        return float(WEEKDAYS[m.group(1).lower()]), "weekday"
    if kind == "every":
        word = (m.group(1) or m.group(2) or m.group(3)).lower()
        per = {"hourly": "hour", "daily": "day", "weekly": "week", "monthly": "month", "yearly": "year"}.get(word, word)
        per = {"每小时": "hour", "每个小时": "hour", "每天": "day", "每日": "day", "每周": "week", "每个星期": "week", "每星期": "week", "每月": "month", "每个月": "month", "每年": "year"}.get(per, per)
        if per in MINUTES:
            return float(MINUTES[per]), "minutes"  # "every hour" is 60 minutes apart, as "every 30 minutes" is 30
        return (1.0, f"{per}s") if per in ("month", "year") else None
    if kind == "money_prefix":
        return _float(m.group(1)), "yuan"
    if kind == "day_of_month":
        day = number(m.group(1) or m.group(2))
        return (day, "day_of_month") if day and 1 <= day <= 31 else None
    if kind == "unit_zh":
        value = number(m.group(2))
        unit, factor = ZH_UNITS[m.group(3)]
        if value is None or (unit == "times" and value < 2):
            return None  # "一次": once, a manner of speaking
        return value * factor, unit
    if kind == "unit_en":
        value = number(m.group(1))
        word = m.group(2).lower()
        unit, factor = EN_UNITS[word]
        if _WORKING.search(m.group(0)):
            unit, factor = "workdays", 1
        if unit == "times" and m.group(1).lower() in ("a", "an", "first", "second", "third"):
            return None  # "a time", "the first time": no count
        return (value * factor, unit) if value is not None else None
    if kind == "percent":
        return _float(m.group(1)), "percent"
    if kind in ("number_zh", "number_en"):
        value = number(m.group(0))
        word = m.group(0).lower()
        if value is None or word in ("a", "an", "second", "single") or (value < 2 and kind == "number_zh"):
            return None  # "a", "一个", "second": an article or a word, counted only with a unit ("a week", "一小时")
        if word == "one" and _PRONOUN_ONE.search(m.string[: m.start()]):
            return None  # "this one", "the one that"
        return value, ""
    return _float(m.group(1)), ""


def number(text: str | None) -> float | None:
    """Digits, an English number word or Chinese numerals as a number; None when it is none of these."""
    if not text:
        return None
    text = text.strip()
    if re.fullmatch(_DIGITS, text):
        return _float(text)
    word = EN_NUMBERS.get(text.lower())
    if word is not None:
        return float(word)
    if re.fullmatch(_CN_NUM, text):
        return _chinese(text)
    return None


def _chinese(text: str) -> float | None:
    total, section, digit = 0, 0, None
    for char in text:
        if char in CN_DIGITS:
            digit = CN_DIGITS[char]
        elif char in CN_UNITS:
            unit = CN_UNITS[char]
            if unit == 10_000:
                total += (section + (digit or 0)) * unit
                section, digit = 0, None
            else:
                section += (1 if digit is None else digit) * unit
                digit = None
        else:
            return None
    return float(total + section + (digit or 0))


def _float(text: str) -> float:
    return float(text.replace(",", ""))


_CODE = re.compile(r"(?<![\w-])([A-Za-z]{2,})[-_]?(\d{1,4})(?![\w.-])")


def codes(text: str) -> list[Quantity]:
    """Names with a number in them (SEV1, int8, sm70, fp16), as quantities of their family
    (unit "code:sev", value 1): what a wrong binding swaps ("SEV2 gets an incident channel" where
    the passage gives it to SEV1) like it swaps numbers."""
    return [
        Quantity(float(m.group(2)), f"code:{m.group(1).lower()}", m.group(0), m.start(), m.end(), float(m.group(2)))
        for m in _CODE.finditer(text)
    ]
