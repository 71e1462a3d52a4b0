"""The imperative shell: each adapter translates between the outside and core values."""
