"""Storage: clients of the stores and the contract of what is kept in each."""
