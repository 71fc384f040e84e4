if a.verdict == 'allowlist' then return answer('denied', 'allowlist') end
