"""The layout of a data set folder, one definition for the loader, the generator and every reader.

`finegrain data load` writes the real data into `<data dir>/retail/` (`Settings.retail_dir`);
`finegrain data synth` writes the same files into a folder of its own.
"""

EVENTS_FILE = "events.parquet"  # one row per clean purchase line (`finegrain.data.retail.EVENTS_SCHEMA`)
CATALOG_FILE = "catalog.parquet"  # one row per item (`CATALOG_SCHEMA`)
REPORT_FILE = "report.json"  # the counts of the run
LOADED_FOLDER = "retail"  # the loaded data's folder under the data dir
WATERMARK_FILE = "watermark.json"  # what the nightly ingest has merged in (`finegrain.data.ingest`)
