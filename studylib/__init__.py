"""studylib: the helper package of the image-classifier benchmark study.

The notebooks in notebooks/ tell the story; studylib does the work. Its modules sit in layers, and an
import points to the module's own layer or one below it, never above; no studylib import hides inside
a function, and there is no cycle (tests/test_layers.py checks all three, with this list as data):

    cli                          the `studylib` command: dispatches to the modules below
    study/  bench                orchestration: grid files, running cells, collecting records, the book;
                                 the benchmark of the study's own training step against a bare one
    views/                       figures and tables the notebooks show, one module per notebook
    stages/                      one module (or package) per stage notebook: parameters, steps, record
    serve/                       exporting a trained run, the HTTP app, the load-test client
    train/                       the setup shared by train, tune and bench; the loop; one whole run
    params                       every stage's parameters on one base class, validated before any work
    models  data/                the model factory; datasets (registry, sources, splits, integrity, storage, cache)
    nets                         the study's own networks (003's VGG, fastvgg, airbench), built by models
    environment  record          what a run ran on; the run record's schema;
    uncertainty                  intervals of test top-1 over seeds and test images, paired comparisons
    errors  paths  util          leaves
"""
__version__ = "0.1.0"
