-- Where clients connect to an operator-managed broker, as its Broker resource advertises it in
-- status.endpoints (the operator sends both with its registration and every change). NULL for
-- brokers made through the API: their endpoints are derived from the api's domain.
ALTER TABLE brokers ADD COLUMN endpoint TEXT;
ALTER TABLE brokers ADD COLUMN ws_endpoint TEXT;
