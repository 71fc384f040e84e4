if a.verdict ~= '' then return answer('denied', a.verdict) end
