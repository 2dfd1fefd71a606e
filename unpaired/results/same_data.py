"""Whether the runs a comparison reads saw the same images. Each run records hashes of the images it trained on and of
those it was scored on (:func:`unpaired.plugin_api.data.fingerprints`); when a dataset changed between the runs of a
study (images added, removed or edited), compare and the report say which runs differ, instead of mixing them."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence


def data_cautions(
    names: Sequence[str], variants: Sequence[str], train_data: Sequence[Mapping[str, str]], test_data: Sequence[Mapping[str, str]]
) -> list[str]:
    """Cautions about the compared runs (``names``: each run as the cautions name it, with its variant, the hashes of its
    training images and those of its test images, in order): seeds of one variant trained on different images, and runs
    scored on different test images. Runs that recorded no hashes (made before they were recorded) are not counted;
    variants that train on different data by design are not cautioned for it. Variants scored on different test images
    are, whatever the cause: their scores do not compare."""
    cautions = []
    by_variant = {variant: _sets([(n, t) for n, v, t in zip(names, variants, train_data) if v == variant]) for variant in dict.fromkeys(variants)}
    trained_apart = [f"{variant}: {sets}" for variant, sets in by_variant.items() if sets]
    if trained_apart:
        cautions.append(
            f"Caution: the seeds of a variant did not all train on the same images ({'; '.join(trained_apart)}): the training "
            "data changed between runs, so the spread over seeds mixes datasets; train every seed on one dataset (delete the "
            "runs trained on the others and run the study again)."
        )
    scored = {variant: [(n, t) for n, v, t in zip(names, variants, test_data) if v == variant] for variant in by_variant}
    if any(_sets(runs) for runs in scored.values()):  # a variant's seeds scored on different images: the data changed
        cautions.append(
            f"Caution: the runs were not all scored on the same test images ({_sets(list(zip(names, test_data)))}): the test "
            "data changed between scorings, and scores of different test images do not compare; `unpaired score` on the "
            "study scores every run again on the test images as they are now."
        )
    elif variants_apart := _sets([(variant, next((t for _, t in runs if t), {})) for variant, runs in scored.items()]):
        cautions.append(
            f"Caution: the variants were not all scored on the same test images ({variants_apart}): scores of different "
            "test images do not compare, so the ranking and each difference from the baseline mix a variant's setting with "
            "its test images. Variants that differ in their data (a grid over data.size or data) are scored so by design; "
            "where the test data changed between scorings instead, `unpaired score` on the study scores every run again "
            "on the test images as they are now."
        )
    return cautions


def _sets(runs: Sequence[tuple[str, Mapping[str, str]]]) -> str | None:
    """The runs grouped by their hashes, in words (``a seed 2; the other 5 runs: 2 different sets``); None when they all
    share one set."""
    groups: dict[str, list[str]] = {}
    for name, hashes in runs:
        if hashes:
            groups.setdefault(json.dumps(hashes, sort_keys=True), []).append(name)
    if len(groups) < 2:
        return None
    largest, *others = sorted(groups.values(), key=len, reverse=True)
    if len(largest) > max(2, len(others[0])):  # one set most runs share: the others are named, it is counted
        parts = [*(_listed(group) for group in others), f"the other {len(largest)} runs"]
    else:
        parts = [_listed(group) for group in (largest, *others)]
    return f"{'; '.join(parts)}: {len(groups)} different sets"


def _listed(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
