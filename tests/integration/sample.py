"""Facts of the sample data (the real Online Retail II file) that the integration tests check figures
against. The code derives them (`finegrain.evaluation.protocol.readme_split`); the tests pin them, and
`test_the_readme_split_is_derived_from_the_data` checks the two agree."""

from __future__ import annotations

from datetime import date

# The data set README's split: its test window is the data's last 30 days.
SPLIT_DATE = date(2010, 11, 10)
