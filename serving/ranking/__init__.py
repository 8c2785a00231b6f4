"""Rankers as serving uses them: one interface, an implementation per kind of model, and
`load_model`, which turns a published manifest and its verified artifact into a scoring object."""
