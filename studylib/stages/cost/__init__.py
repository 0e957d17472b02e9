"""What each run costs: to prepare its data, tune, train, evaluate and serve, on which machine.

cost.ipynb imports the modules below, one job each; its figures and views are in studylib.views.cost.

    params       CostParams: the notebook's parameters
    prices       params/prices.yaml read and validated (each price with its source and date)
    machines     which price entry a run's hardware is priced at
    readers      the study's records read as their models in studylib.record
    measures     seconds priced by the hour, DAWNBench's time-to-accuracy, the Pareto front
    tables       the notebook's tables, from the records and the price book
    projections  a run's training cost on other machines, through a measured speed ratio only
    automl       reference study 000's published rows next to ours
    record       the tables as the CostRecord the notebook glues

The rules:

- A run is priced on the machine it ran on: its hardware label (GPU name, or CPU model and
  count) is matched to a price entry. Hardware with no price entry stays unpriced and says so.
- Time-to-accuracy is DAWNBench's: the train and validation seconds up to the end of the first
  epoch whose validation top-1 is at or above the target; cost-to-accuracy is that time priced.
- A run is priced on another machine only when the results hold a measured speed ratio between
  the two: runs of the same model and parameters (seed and execution settings aside) on both.
  Otherwise the table says "not measured". Nothing is extrapolated from specifications.
"""
