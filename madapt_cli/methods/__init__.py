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
