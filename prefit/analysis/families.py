"""The families report ("Beyond SIREN"): the same cells fit by several neural fields (a sweep whose study key is
`model.family`, e.g. `model=siren,ffn,gauss`), each with the constants and learning rate its own config sets
(conf/model/<family>.yaml), so those keys vary with the family and nothing else may. The original asked its
question of SIRENs only: does a pre-fit start beat a random one? The verdicts stand side by side per family
(prefit.analysis.axis), and a generated paragraph says, family by family, whether the counts point the same way as
SIREN's. The protocol report includes the same section (`--families`).
"""

from __future__ import annotations

from prefit.choices import Family
from prefit.config import FAMILY_KEYS
from prefit.schema import BASELINE

from .axis import Axis, ByAxis
from .reduce import measures_in
from .tables import verdict_counts

KEY = "model.family"
BY = "family"
REFERENCE = Family.siren.value  # the original's family, whose answer the others are held against
ANSWER_MEASURES = ("auc_capped", "epochs_to_30db")  # the measures the answer counts by
# each family's own constants and its learning rate: set by conf/model/<family>.yaml along with the family
IMPLIED = (*(f"model.{key}" for keys in FAMILY_KEYS.values() for key in keys), "train.lr")
# how a scheme's verdicts lean over the cells: (one scheme, several)
LEANS = {
    "beats": ("beats random", "beat random"),
    "worse": ("is worse than random", "are worse than random"),
    "neither": ("leans neither way", "lean neither way"),
    None: ("has no cell with pairs", "have no cell with pairs"),
}
Tally = dict[tuple[str, str, str], dict]  # (family, scheme, measure label) -> beats, worse, unclear, of


def family_order(value: object) -> tuple[int, str]:
    """The families in prefit.choices.Family's order (SIREN first), any other after them by name."""
    known = [f.value for f in Family]
    return (known.index(str(value)), "") if str(value) in known else (len(known), str(value))


def tally(data: ByAxis) -> tuple[Tally, list[str], list[str]]:
    """Per family, pre-fit scheme and answer measure: in how many cells the scheme beats random, is worse, is
    unclear, of those with pairs; the schemes and the measures' labels."""
    measures = [m for m in measures_in(data.auc.columns) if m.name in ANSWER_MEASURES]
    stats = data.stats[data.stats["scheme"] != BASELINE]
    counts = verdict_counts(stats, measures, BY, data.labels)
    found = {(c["side"], c["scheme"], c["measure"]): c | {"unclear": c["of"] - c["beats"] - c["worse"]} for c in counts}
    schemes = list(dict.fromkeys(c["scheme"] for c in counts))
    return found, schemes, [m.label for m in measures]


def leaning(count: dict) -> str | None:
    """Which way a scheme's verdicts point: beats, worse or neither (as many cells each way); None without cells."""
    if count["of"] == 0:
        return None
    return "beats" if count["beats"] > count["worse"] else "worse" if count["worse"] > count["beats"] else "neither"


def joined(items: list[str]) -> str:
    """`a`, `a and b`, `a, b and c`."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def leans_text(counts: Tally, family: str, schemes: list[str], measure: str) -> str:
    """The schemes grouped by how they lean, with their cells: `same_class (2 better, 0 worse of 3 cells) and
    other_class (1, 0 of 3) beat random, shared_encoder (0, 0 of 3) leans neither way`."""
    groups: dict[str | None, list[str]] = {}
    for scheme in schemes:
        count = counts[(family, scheme, measure)]
        groups.setdefault(leaning(count), []).append((scheme, count))
    parts, first = [], True
    for lean, members in groups.items():
        named = []
        for scheme, c in members:
            numbers = (
                f"{c['beats']} better, {c['worse']} worse of {c['of']} cells"
                if first
                else (f"{c['beats']}, {c['worse']} of {c['of']}")
            )
            named.append(f"{scheme} ({numbers})")
            first = False
        parts.append(f"{joined(named)} {LEANS[lean][len(members) > 1]}")
    return ", ".join(parts)


def differences(counts: Tally, family: str, schemes: list[str], measures: list[str]) -> list[str]:
    """The schemes whose verdicts lean another way than SIREN's, grouped by the measures where they do:
    `same_class and other_class (both measures)`, `shared_encoder (capped AUC)`."""
    by_where: dict[str, list[str]] = {}
    for scheme in schemes:
        where = [m for m in measures if leaning(counts[(family, scheme, m)]) != leaning(counts[(REFERENCE, scheme, m)])]
        if where:
            by_where.setdefault("both measures" if len(where) == len(measures) == 2 else joined(where), []).append(
                scheme
            )
    return [f"{joined(found)} ({where})" for where, found in by_where.items()]


def reference_text(counts: Tally, schemes: list[str], measures: list[str]) -> str:
    """SIREN's own answer in one sentence: every pre-fit scheme leaning one way by every measure, or mixed."""
    leans = {leaning(counts[(REFERENCE, s, m)]) for s in schemes for m in measures}
    if leans == {"beats"}:
        return "Here pre-fitting helps SIRENs: every pre-fit scheme beats random in more cells than it is worse."
    if leans == {"worse"}:
        return "Here pre-fitting hurts SIRENs: every pre-fit scheme is worse than random in more cells than it beats."
    return "Here SIREN's answer is mixed: its pre-fit schemes do not all lean the same way."


def answer(data: ByAxis) -> dict[str, object]:
    """The paragraph "does the original's question have the same answer for other families?": per family and
    answer measure how each pre-fit scheme leans over the cells (more cells better than random, more worse, or as
    many), then whether that is SIREN's answer (the same only when every scheme and measure leans the same way; else
    the schemes that differ named, with their measures)."""
    counts, schemes, measures = tally(data)
    lines, same, other = [], [], []
    for family in data.labels:
        line = f"**{family}**: " + "; ".join(f"by the {m}, {leans_text(counts, family, schemes, m)}" for m in measures)
        if family != REFERENCE and REFERENCE in data.labels:
            found = differences(counts, family, schemes, measures)
            (other if found else same).append(family)
            line += f". Not SIREN's answer for {joined(found)}" if found else ". The same answer as SIREN"
        lines.append(line + ".")
    if REFERENCE not in data.labels:
        verdict = "There is no SIREN in this sweep, so no family's answer is compared with the original's."
    else:
        verdict = (
            f"{reference_text(counts, schemes, measures)} "
            f"The same answer as SIREN: {', '.join(same) or 'none'}; a different one: {', '.join(other) or 'none'}."
        )
    return {"answer": {"lines": lines, "verdict": verdict, "measures": measures, "schemes": schemes}}


AXIS = Axis(
    KEY,
    BY,
    "families",
    str,
    family_order,
    "run the cells with two families in one sweep (model=siren,ffn)",
    implied=IMPLIED,
    title="{hls} hidden layers, {hfs} hidden features, one panel per family: PSNR vs epoch",
    extra=answer,
)
