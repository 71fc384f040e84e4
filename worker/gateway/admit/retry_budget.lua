retry_budget(KEYS[13], 'call', a.retry.ratio, a.retry.min_retries, a.retry.window_ms, now_int)
