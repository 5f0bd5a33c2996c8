"""The families report ("Beyond SIREN"): the same cells fit by several neural fields (a sweep whose study key is
`model.family`, e.g. `model=siren,ffn,gauss`), each with the constants and learning rate its own config sets
(conf/model/<family>.yaml), so those keys vary with the family and nothing else may. The original asked its
question of SIRENs only: does a pre-fit start beat a random one? The verdicts stand side by side per family
(prefit.analysis.axis), and a generated paragraph says, family by family, whether the counts point the same way as
SIREN's. The protocol report includes the same section (`--families`).
"""

from __future__ import annotations

from pathlib import Path

from prefit.choices import Family
from prefit.config import FAMILY_KEYS
from prefit.schema import BASELINE

from .axis import Axis, ByAxis, write_axis_report
from .folders import Folder, Folders
from .pipeline import DEFAULT_OPTIONS, Options
from .reduce import measures_in
from .tables import verdict_counts

KEY = "model.family"
BY = "family"
REFERENCE = Family.siren.value  # the original's family, whose answer the others are held against
ANSWER_MEASURES = ("auc_capped", "epochs_to_30db")  # the measures the answer counts by
# each family's own constants and its learning rate: set by conf/model/<family>.yaml along with the family
IMPLIED = (*(f"model.{key}" for keys in FAMILY_KEYS.values() for key in keys), "train.lr")
LEANS = {
    "beats": "beats random in more cells than it is worse",
    "worse": "is worse than random in more cells than it beats it",
    "neither": "beats random in as many cells as it is worse",
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


def counts_text(count: dict) -> str:
    """`beats random in 2, is worse in 0 and unclear in 1 of 3 cell(s)`."""
    if count["of"] == 0:
        return "has no cell with pairs"
    numbers = f"beats random in {count['beats']}, is worse in {count['worse']} and unclear in {count['unclear']}"
    return f"{numbers} of {count['of']} cell(s)"


def differences(counts: Tally, family: str, schemes: list[str], measures: list[str]) -> list[str]:
    """Where a family's verdicts point another way than SIREN's, by scheme and measure, in words."""
    found = []
    for measure in measures:
        for scheme in schemes:
            mine, theirs = (leaning(counts[(f, scheme, measure)]) for f in (family, REFERENCE))
            if mine != theirs:
                words = {
                    f: LEANS.get(lean, "has no cell with pairs") for f, lean in ((family, mine), (REFERENCE, theirs))
                }
                found.append(
                    f"{scheme} by the {measure} {words[family]} for {family}, but {words[REFERENCE]} for SIREN"
                )
    return found


def answer(data: ByAxis) -> dict[str, object]:
    """The paragraph "does the original's question have the same answer for other families?": per family and
    answer measure the counts of every pre-fit scheme, then whether they point the same way as SIREN's (the same
    answer only when every scheme and measure leans the same way; else the differences named)."""
    counts, schemes, measures = tally(data)
    lines, same, other = [], [], []
    for family in data.labels:
        parts = [
            f"By the {m}: " + "; ".join(f"{s} {counts_text(counts[(family, s, m)])}" for s in schemes) for m in measures
        ]
        line = f"**{family}**. " + ". ".join(parts)
        if family != REFERENCE and REFERENCE in data.labels:
            found = differences(counts, family, schemes, measures)
            (other if found else same).append(family)
            line += ". Not SIREN's answer: " + "; ".join(found) if found else ". The same answer as SIREN"
        lines.append(line + ".")
    if REFERENCE not in data.labels:
        verdict = "There is no SIREN in this sweep, so no family's answer is compared with the original's."
    else:
        verdict = (
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
    at="for",
    title="{hls} hidden layers, {hfs} hidden features, one panel per family: PSNR vs epoch",
    extra=answer,
)
DEFAULT_NAME = AXIS.default_name


def write_families_report(
    sweep: Folders, out: Folder | None = None, options: Options = DEFAULT_OPTIONS
) -> dict[str, Path]:
    """Read a families sweep's analysis (one folder, or several of one study) and write its report (beside the first
    folder by default) with its figures."""
    return write_axis_report(AXIS, sweep, out, options)
