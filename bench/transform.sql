SELECT order_id, customer_id, lower(email) AS email, CAST(amount AS DECIMAL(12,2)) AS amount, created_at
FROM input
WHERE status <> 'cancelled'
