"""Ways to make an adaptor (``madapt fit --method NAME``): see :mod:`madapt_cli.methods.base`.

A new method is one module here with a :class:`~madapt_cli.methods.base.Method` subclass,
plus one line in :data:`METHODS` (kept here, free of imports, so the CLI lists the methods
without loading torch).
"""

#: method name -> "module:Class" of its Method (imported when first asked for)
METHODS: dict[str, str] = {
    "matryoshka": "madapt_cli.methods.matryoshka:Matryoshka",
    "pca": "madapt_cli.methods.pca:PCA",
    "smec": "madapt_cli.methods.smec:SMEC",
}


def default_method(mode: str) -> str:
    """The method `madapt fit` trains without ``--method``: SMEC with labels (above the
    Matryoshka-Adaptor at every size on SciFact and NFCorpus, docs/benchmarks.md), the
    Matryoshka-Adaptor without them (it learns from unlabelled queries)."""
    return "smec" if mode == "supervised" else "matryoshka"
