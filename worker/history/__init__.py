"""Run history in SQL: ended runs archived from Redis, queried by `GET /v1/runs` and
`GET /v1/usage`. `schema` holds the tables."""
