"""The local Kafka broker and PostgreSQL server that ``monitor services`` starts on one machine."""
