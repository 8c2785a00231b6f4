"""Data sets as Parquet: the Online Retail II loader (`retail`) and its scaled-up synthetic twin
(`synthetic`), both written in the same layout (events, catalogue, report.json) so every later job
can read either."""
