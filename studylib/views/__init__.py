"""Figures and tables the notebooks show, one module per notebook (format: how every table prints numbers;
cost_figures: the cost page's figures): records or frames in, figures or frames out."""
