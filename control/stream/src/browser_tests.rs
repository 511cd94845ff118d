// browser tests: written below
