"""Workflow engines' interfaces to ilex, imported explicitly (`import ilex` does not load them):

* `ilex.interfaces.nipype`: `Registration` and `ApplyTransforms`, Nipype interfaces shaped like
  `nipype.interfaces.ants`'s (needs `pip install ilex[nipype]`);
* `ilex.interfaces.pydra`: the same two as Pydra tasks, Pydra's 0.x API (`pip install ilex[pydra]`).

Both run the `ilex register` and `ilex apply` command lines (`_commands`); docs/pipelines.md shows
them in place of ANTs in a workflow. A workflow's process that itself runs JAX should start the
engine's worker pool by forkserver or spawn, not fork (docs/pipelines.md, Fork safety).
"""
