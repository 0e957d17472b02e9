"""Orchestration: grid files, running cells with papermill over Dask, collecting records, the book.

Its modules, each importing only those listed before it:

    manifest   the stages, a study's cells (results/<study>/cells.json) and where their notebooks live
    execute    one cell: papermill runs its notebook, its `record` scrap is checked, its clocks read
    book       the report pages and the book's table of contents
    collect    `studylib collect`: every record of a study into tables, and the readers for them
    schema     the grid file's schema (pydantic models) and each stage's default cell timeout
    expand     a grid file read through the schema, validated and expanded into cells
    overhead   where the executed notebooks' time went (the methods chapter, `studylib bench --overhead`)
    runner     `studylib grid`: the Dask cluster and the run of every cell, stage by stage
"""
