"""studylib: the helper package of the image-classifier benchmark study.

The notebooks in notebooks/ tell the story; studylib does the work. Its packages are layers, and
imports point one way only, downwards (tests/test_layers.py checks it, and that no studylib import
hides inside a function):

    cli                     the `studylib` command: dispatches to the modules below
    study/  bench           orchestration: grid files, running cells, collecting records, the book;
                            the benchmark of the study's own loop against a bare step
    views/                  figures and tables for the notebooks, one module per notebook
    stages/  serve/         one module (or package) per stage notebook; exporting and serving a run
    train/                  the training setup, loop, one whole run, metrics, profiling
    data/  models           datasets (registry, sources, splits, storage, cache, batches); model factory
    params  record          validated parameters; the run record's schema
    errors paths util environment   leaves: no studylib imports but each other

A module may import from its own layer's leaves and from any layer below it, never above.
"""
__version__ = "0.1.0"
