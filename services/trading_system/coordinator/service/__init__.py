"""The deployed coordinator: replicas over PostgreSQL and RabbitMQ, and the operators' CLI."""
