"""The models half of the algorithm engine: training sets, rankers, embedding recall, evaluation, and
the registry (`models.registry`) and ZooKeeper publishing (`models.publishing`) they all go through.

Nothing is imported here, so that a training job importing one sub-module does not pay for the rest.
"""
