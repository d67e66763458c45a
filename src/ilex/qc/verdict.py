"""The verdict on one registration: stated rules, each a measured figure against a threshold.

`rules(record)` reads a pair's qc.json figures (`metrics.py`) and returns one `Rule` per check:
its name, the value measured, the threshold, whether it passed (None: not measured, or not
applicable) and a one-line reason. The pair page states them all and `qc.json` keeps them
(key `verdict`); the study page and `ilex template` flag a pair that fails any of them.

The rules look for gross failures (a flipped or swapped header axis, voxels mirrored front-back
or up-down in place (`orientation.py`), a wrong initial transform,
heads the headers put apart, a moving image that is not a head), with figures that do not depend
on the contrasts: the normalised mutual information after registration, the overlap of the two
heads, the affine part against the head's size, and the Jacobian. The thresholds were set on
`-m optimize` registrations of the fetched templates onto each other (`bench/report_verdicts.py`;
docs/reports.md gives the measured values and the false-alarm rate).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Measured by bench/report_verdicts.py (bench/results/report_verdicts.json): 20 good pairs (the five fetched
# templates onto each other, -m optimize) and 6 broken ones (Colin27 onto MNI152 2009a, spoiled).
#
# Normalised mutual information (Studholme, 32 bins, inside the fixed head) after registration: good pairs
# 1.052-1.252 (a skull-stripped brain onto a whole head, and T2 onto T1, the lowest); broken ones 1.001-1.022
# (noise 1.001, a negated or swapped header axis 1.013 and 1.009, a wrong -i 1.022).
SIMILARITY_FLOOR = 1.035
# NMI lower after than before by more than this: good pairs lose up to 0.011 (two near-identical MNI
# templates 0.006; a skull-stripped brain onto a head 0.011), a wrong -i 0.032.
SIMILARITY_LOSS = 0.02
# The share of the smaller head inside the other (metrics.containment). Before registration, below
# this the heads are apart: the headers disagree, and the similarity before is that of unrelated images
# (good pairs 0.94-1.00; a negated front-back axis or an origin 300 mm off: 0.00).
OVERLAP_BEFORE_FLOOR = 0.05
# After registration good pairs keep 0.972-1.000 of the smaller head inside the other.
OVERLAP_AFTER_FLOOR = 0.9
ROTATION_MAX_DEG = 30.0  # good pairs 0.0-1.5°; heads lie within ~20° of a template's axes in a scanner
SHIFT_MAX_HEAD = 0.5  # head centre moved by more than half the head's size (good pairs ≤ 0.03; broken 1.3, 2.0)
SCALE_RANGE = (2 / 3, 3 / 2)  # good pairs 0.94-1.26
# SD of log det J inside the head: good pairs 0.095-0.313 (-m optimize, λ 0.5); 0.5 is volume changes
# by a factor 1.65 for one voxel in three.
JACOBIAN_SPREAD_MAX = 0.5
# orientation.orientation_check: the registered pair's NMI gain over unrelated images (NMI - 1, affine part only,
# 6 mm) as a share of the best turned or mirrored copy's. Below 1 a turned copy fits better than the registration.
# Tuning (report_verdicts_orientation.json, report_verdicts_held_out_orientation.json): good pairs 1.52-10.0;
# swapped axes 0.47-0.48, mirrored in place 0.41-0.52, negated axis 0.42-0.52; noise 0.88-0.96. The second held-out
# set (report_verdicts_held_out_2.json): good 2.15-9.87, swapped 0.37-0.69, mirrored 0.44-0.77.
ORIENTATION_RATIO_MIN = 1.0


@dataclass(frozen=True)
class Rule:
    """One check of a registration: `value` (None: not measured) against `threshold`;
    `passed` is None where the rule does not apply or was not measured."""

    name: str
    value: float | bool | list[float] | None
    threshold: float | str
    fails_when: str
    passed: bool | None
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


RULE_TEXT = (
    f"Rules: NMI after registration at least {SIMILARITY_FLOOR} (unrelated images give 1.00–1.02); NMI not "
    f"lower after than before by more than {SIMILARITY_LOSS}; the heads overlapping before registration (at "
    f"least {OVERLAP_BEFORE_FLOOR:.0%} of the smaller head inside the other: otherwise the headers put them "
    f"apart) and after it (at least {OVERLAP_AFTER_FLOOR:.0%}); an affine part that does not reflect, rotates "
    f"at most {ROTATION_MAX_DEG:.0f}°, moves the head's centre by at most {SHIFT_MAX_HEAD} × the head's size and "
    f"scales within {SCALE_RANGE[0]:.2f}–{SCALE_RANGE[1]:.2f}; no folded voxel in the head; a log-Jacobian spread "
    f"(SD in the head) at most {JACOBIAN_SPREAD_MAX}; the moving image, placed by the affine part, fitting the "
    f"fixed one at least as well as any copy of it turned or mirrored front-back or up-down."
)


def _rule(name, value, threshold, fails_when, failed, ok_text, bad_text) -> Rule:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = float(value)  # qc.json may hold 0 for 0.0
    elif isinstance(value, list):
        value = [float(v) for v in value]
    if value is None:
        return Rule(name, None, threshold, fails_when, None, "not measured (a qc.json from an older ilex)")
    return Rule(name, value, threshold, fails_when, not failed, bad_text if failed else ok_text)


def rules(record: dict) -> list[Rule]:
    """The rules applied to a pair's qc.json `record`, in the order the page states them."""
    out = []
    before, after = record.get("similarity_nmi_before"), record.get("similarity_nmi_after")
    overlap_before, overlap_after = record.get("head_overlap_before"), record.get("head_overlap_after")
    out.append(
        _rule(
            "similarity_after",
            after,
            SIMILARITY_FLOOR,
            "below",
            after is not None and after < SIMILARITY_FLOOR,
            f"NMI {after or 0:.3f} after registration",
            f"the images share little after registration: normalised mutual information {after or 0:.3f} "
            f"(unrelated images give 1.00–1.02; good pairs of the templates 1.05 and more)",
        )
    )
    apart = overlap_before is not None and overlap_before < OVERLAP_BEFORE_FLOOR
    if apart:
        out.append(
            Rule(
                "similarity_gain",
                None if before is None or after is None else float(after - before),
                -SIMILARITY_LOSS,
                "below",
                None,
                "not applicable: the heads did not overlap before registration, so the similarity before is "
                "that of unrelated images (see overlap_before)",
            )
        )
    else:
        gain = None if before is None or after is None else float(after - before)
        out.append(
            _rule(
                "similarity_gain",
                gain,
                -SIMILARITY_LOSS,
                "below",
                gain is not None and gain < -SIMILARITY_LOSS,
                f"NMI {before or 0:.3f} with the headers alone → {after or 0:.3f} after",
                f"the images agree less after registration than before it (normalised mutual information "
                f"{after or 0:.3f} after, {before or 0:.3f} with the headers alone)",
            )
        )
    out.append(
        _rule(
            "overlap_before",
            overlap_before,
            OVERLAP_BEFORE_FLOOR,
            "below",
            apart,
            f"{100 * (overlap_before or 0):.0f} % of the smaller head inside the other with the headers alone",
            f"the headers put the heads apart: {100 * (overlap_before or 0):.1f} % of the smaller head inside the "
            "other before registration (a wrong origin, a negated or swapped axis in a header?)",
        )
    )
    out.append(
        _rule(
            "overlap_after",
            overlap_after,
            OVERLAP_AFTER_FLOOR,
            "below",
            overlap_after is not None and overlap_after < OVERLAP_AFTER_FLOOR,
            f"{100 * (overlap_after or 0):.0f} % of the smaller head inside the other after registration",
            f"the heads do not overlap after registration: {100 * (overlap_after or 0):.0f} % of the smaller head "
            f"inside the other (good pairs: 97 % and more)",
        )
    )
    affine = record.get("affine") or {}
    reflection = affine.get("reflection")
    out.append(
        _rule(
            "reflection",
            reflection,
            "det < 0",
            "true",
            bool(reflection),
            "the affine part keeps handedness (det > 0)",
            "the affine part reflects (det < 0): left and right (or front and back) are swapped",
        )
    )
    angle = affine.get("rotation_deg")
    out.append(
        _rule(
            "rotation",
            angle,
            ROTATION_MAX_DEG,
            "above",
            angle is not None and angle > ROTATION_MAX_DEG,
            f"the affine part rotates by {angle or 0:.1f}°",
            f"the affine part rotates by {angle or 0:.0f}° (more than {ROTATION_MAX_DEG:.0f}°)",
        )
    )
    shift, size = affine.get("centre_shift_mm"), record.get("head_size_mm")
    ratio = None if shift is None or not size else float(shift / size)
    out.append(
        _rule(
            "shift",
            ratio,
            SHIFT_MAX_HEAD,
            "above",
            ratio is not None and ratio > SHIFT_MAX_HEAD,
            f"the head's centre moves {shift or 0:.1f} mm ({ratio or 0:.2f} × the head's {size or 0:.0f} mm)",
            f"the affine part moves the head's centre by {shift or 0:.1f} mm, {ratio or 0:.2f} × the head's size "
            f"({size or 0:.0f} mm; more than {SHIFT_MAX_HEAD})",
        )
    )
    scales = affine.get("scales") or []
    low, high = (min(scales), max(scales)) if scales else (None, None)
    out.append(
        _rule(
            "scale",
            None if not scales else [low, high],
            f"{SCALE_RANGE[0]:.2f}–{SCALE_RANGE[1]:.2f}",
            "outside",
            bool(scales) and (low < SCALE_RANGE[0] or high > SCALE_RANGE[1]),
            f"the affine part scales by {low or 0:.2f}–{high or 0:.2f}",
            f"the affine part scales by {low or 0:.2f}–{high or 0:.2f} "
            f"(outside {SCALE_RANGE[0]:.2f}–{SCALE_RANGE[1]:.2f})",
        )
    )
    folding = record.get("head_folding_fraction", record.get("folding_fraction"))
    out.append(
        _rule(
            "folding",
            folding,
            0.0,
            "above",
            bool(folding),
            "no folded voxel in the head",
            f"the warp folds: det J ≤ 0 in {100 * (folding or 0):.3g} % of the head's voxels",
        )
    )
    spread = record.get("head_log_jacobian_std")
    out.append(
        _rule(
            "jacobian_spread",
            spread,
            JACOBIAN_SPREAD_MAX,
            "above",
            spread is not None and spread > JACOBIAN_SPREAD_MAX,
            f"log det J spread {spread or 0:.3f} in the head",
            f"the warp changes volumes wildly: log det J spread {spread or 0:.2f} in the head "
            f"(more than {JACOBIAN_SPREAD_MAX})",
        )
    )
    nmi, best = record.get("orientation_nmi"), record.get("orientation_best_nmi")
    ratio = None if nmi is None or best is None else float((nmi - 1) / max(best - 1, 1e-9))
    turn = record.get("orientation_best", "")
    out.append(
        _rule(
            "orientation",
            ratio,
            ORIENTATION_RATIO_MIN,
            "below",
            ratio is not None and ratio < ORIENTATION_RATIO_MIN,
            f"as registered the images agree {ratio or 0:.1f} × as much as with the moving image turned or mirrored "
            f"(NMI {nmi or 0:.3f}, best turned copy {best or 0:.3f})",
            f"the moving image fits better turned or mirrored ({turn}: NMI {best or 0:.3f} against {nmi or 0:.3f} "
            "as registered, affine part only): swapped header axes, or voxels mirrored front-back or up-down?",
        )
    )
    return out


def failed_rules(record: dict) -> list[Rule]:
    """The rules `record` fails (empty: nothing looks wrong)."""
    return [r for r in rules(record) if r.passed is False]


def verdict(record: dict) -> dict:
    """What qc.json keeps: `passed` (no rule failed), `failed` (their names) and every rule."""
    checked = rules(record)
    failed = [r.name for r in checked if r.passed is False]
    return {"passed": not failed, "failed": failed, "rules": [r.to_dict() for r in checked]}
