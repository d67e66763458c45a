"""TemplateFlow targets: a fixed image (or `ilex bids --template`) given by a TemplateFlow name.

`MNI152NLin2009cAsym` with resolution 1 names `tpl-MNI152NLin2009cAsym/tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz`
in TemplateFlow's home, `$TEMPLATEFLOW_HOME` (the `templateflow` client's default when unset: its user cache
directory). Files are found through the client (`templateflow.TemplateFlowClient`, its pybids layout and its naming
rules: `res-01` and `res-1` are resolution 1), never by building a path here, so a home the client itself filled
(S3 or DataLad) is read as the client reads it. A file the home lists but does not hold (the client's skeleton keeps
zero-byte placeholders) is fetched by the client, which needs the network; offline, that is a one-line error naming
the file. A name that is not in the home is a one-line error that says where ilex looked and what is there.

A value names a TemplateFlow template when it is not an existing file and looks like a template identifier
(letters and digits, optionally `tpl-` in front): `mni.nii.gz` or `./MNI` stay file names.
"""

from __future__ import annotations

import os
import re

from .errors import FileProblem, OptionError

_NAME = re.compile(r"(?:tpl-)?([A-Za-z0-9]+)")
_IMAGE_EXTENSIONS = (".nii.gz", ".nii")


def templateflow_name(value: str | os.PathLike) -> str | None:
    """The TemplateFlow identifier `value` names (`tpl-` dropped), or None when it is a file path:
    an existing file, or anything but letters and digits."""
    value = os.fspath(value)
    if os.path.exists(value):
        return None
    match = _NAME.fullmatch(value)
    return match.group(1) if match else None


def templateflow_home() -> str:
    """Where the `templateflow` client keeps its templates: `$TEMPLATEFLOW_HOME`, else its user cache
    directory (the client's own rule, `templateflow.conf.env`, written out here: importing the
    `templateflow` package fills an empty home with its skeleton, and a look-up must not write)."""
    from platformdirs import user_cache_dir

    return os.path.abspath(os.getenv("TEMPLATEFLOW_HOME", user_cache_dir("templateflow")))


def resolve_template(name: str, resolution: int | None = None, suffix: str = "T1w") -> str:
    """The local path of TemplateFlow template `name`'s `suffix` image (no `desc`: the head, not
    `desc-brain`) at `resolution` (TemplateFlow's index, `res-01` = 1; None: 1 if the template has
    it, else its only one).

    Raises `OptionError` (one line, naming `TEMPLATEFLOW_HOME` and what it holds) when the home has
    no such template, resolution or image, or several (cohorts: pass a file path instead), and
    `FileProblem` when the client cannot fetch a file the home only lists.
    """
    import importlib.util

    if importlib.util.find_spec("templateflow") is None:
        raise OptionError(
            f"{name}: not a file; TemplateFlow names need the templateflow package: pip install 'ilex[bids]'"
        )
    home = templateflow_home()
    where = f"TEMPLATEFLOW_HOME={home}"
    if not os.path.isdir(home) or not os.listdir(home):
        # Left as it is: the client would fill it with its skeleton (and then download), a side effect of a typo.
        raise OptionError(
            f"{name}: not a file, and {where} holds no TemplateFlow templates (it is missing or empty); set "
            'TEMPLATEFLOW_HOME, or fetch the template with `python -c "import templateflow.api as t; '
            f"t.get('{name}', suffix='{suffix}')\"`"
        )
    client = _client(home)
    try:
        templates = sorted(client.templates())
    except Exception as e:  # noqa: BLE001 — pybids or the client on a damaged home: say where, in one line
        raise OptionError(f"{name}: cannot read TemplateFlow's home ({where}): {type(e).__name__}: {e}") from None
    if name not in templates:
        there = ", ".join(templates[:8]) + (f" and {len(templates) - 8} more" if len(templates) > 8 else "")
        there = there or "no templates"
        raise OptionError(
            f"{name}: not a file, and not a TemplateFlow template in {where} (there: {there}); "
            'set TEMPLATEFLOW_HOME, or fetch it with `python -c "import templateflow.api as t; '
            f"t.get('{name}', suffix='{suffix}')\"`"
        )
    query = {"suffix": suffix, "desc": None, "extension": list(_IMAGE_EXTENSIONS)}
    available = sorted(
        {r for r in client.cache.layout.get(template=name, return_type="id", target="resolution", **query)}, key=int
    )
    if resolution is None:
        resolution = 1 if 1 in available or not available else available[0] if len(available) == 1 else None
        if resolution is None:
            raise OptionError(
                f"{name}: TemplateFlow holds {suffix} images at resolutions {', '.join(map(str, available))} "
                f"in {where}; choose one with --template-resolution"
            )
    files = client.ls(name, resolution=resolution, **query)
    if not files:
        there = f"resolutions {', '.join(map(str, available))}" if available else f"no {suffix} image"
        raise OptionError(
            f"{name}: no {suffix} image at resolution {resolution} (res-{resolution:02d}) in {where} "
            f"(tpl-{name} has {there})"
        )
    if len(files) > 1:
        raise OptionError(
            f"{name}: {len(files)} {suffix} images at resolution {resolution} in {where} "
            f"({', '.join(os.path.basename(f) for f in files)}); give the file's path instead"
        )
    path = files[0]
    if not (os.path.isfile(path) and os.path.getsize(path) > 0):
        try:
            client.get(name, resolution=resolution, **query)
        except Exception as e:  # noqa: BLE001 — the network, S3 or DataLad: one line, the file named
            first = (str(e).strip().splitlines() or [""])[0]
            raise FileProblem(
                path,
                f"TemplateFlow lists it but it is not downloaded, and fetching it failed ({type(e).__name__}: "
                f"{first}); fetch it where the network is, or copy it into {home}",
            ) from None
    return os.fspath(path)


def resolve_image(value: str | os.PathLike, resolution: int | None = None, suffix: str = "T1w") -> str:
    """`value` itself when it is a file path, else the TemplateFlow image it names (`resolve_template`)."""
    name = templateflow_name(value)
    return os.fspath(value) if name is None else resolve_template(name, resolution, suffix)


_clients: dict[str, object] = {}


def _client(home: str):
    """One `TemplateFlowClient` per home (indexing a full home with pybids takes seconds), that never
    updates itself: its skeleton is installed (from the wheel, offline) only where the home is empty."""
    client = _clients.get(home)
    if client is None:
        # templateflow's package import reads $TEMPLATEFLOW_HOME for its own global client; ours is this one.
        from templateflow.client import TemplateFlowClient

        client = _clients[home] = TemplateFlowClient(home, autoupdate=False)
    return client


def resolve_pairs(pairs: list, csv_path: str | os.PathLike, resolution: int | None = None) -> list:
    """`ilex batch`'s pairs (`ilex.batch.Pair`) with each fixed cell that is a TemplateFlow name (a bare
    name, and no such file beside the CSV) replaced by the template's file; a name not found becomes
    its rows' problem (they fail alone, with `resolve_template`'s line). Each name is looked up once."""
    from dataclasses import replace

    from .errors import IlexError

    base = os.path.dirname(os.path.abspath(os.fspath(csv_path)))
    found: dict[str, tuple[str | None, str | None]] = {}
    resolved = []
    for pair in pairs:
        name = None
        if pair.fixed and os.path.dirname(pair.fixed) == base and not os.path.exists(pair.fixed):
            name = templateflow_name(os.path.basename(pair.fixed))
        if name is not None:
            if name not in found:
                try:
                    found[name] = (resolve_template(name, resolution), None)
                except IlexError as e:
                    found[name] = (None, str(e))
            path, problem = found[name]
            pair = replace(pair, fixed=path or pair.fixed, problem=pair.problem or problem)
        resolved.append(pair)
    return resolved
