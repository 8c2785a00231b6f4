"""The streaming sidecar's package: the Spark Structured Streaming code that reads the events topic.

Today it holds the Kafka source only (`spark_jobs.stream.kafka_source`): a PySpark Python streaming
data source over confluent-kafka, used when Spark's own Kafka connector jars are not on the classpath,
and `read_stream`, which picks that source or Spark's built-in `kafka` format with the same columns.
"""
