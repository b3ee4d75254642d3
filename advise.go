package hostbreaker

// Advice is one suggested policy change for a host, or a (host, role),
// with the reason behind it and, for the breaker keys, what it would have
// done on the recorded traffic. It is plain data: it can be printed,
// stored, and given to Tune.
type Advice struct {
	Host     string  `json:"host"`     // normalized host, or a Hosts key
	Role     string  `json:"role"`     // "" when the key is host-wide or for requests without a role
	Key      string  `json:"key"`      // the TOML key: fail_max, reset_timeout, success_threshold, trial_calls, rate
	Current  string  `json:"current"`  // TOML value in force, e.g. "5", "60s", "0"
	Proposed string  `json:"proposed"` // TOML value suggested, within the tune bounds
	Reason   string  `json:"reason"`   // one sentence with the numbers behind it
	Replay   *Replay `json:"replay,omitempty"`
}

// Replay is what the breaker rules would have done on a (host, role)'s
// recorded outcome sequence, under the policy in force and under the
// proposed one. It is an estimate: the sequence is recorded as runs of
// equal outcomes, and the outcomes of rejected requests are unknown.
type Replay struct {
	FailuresSentCurrent      int `json:"failures_sent_current"`      // failures that reached the host under the current policy
	FailuresSentProposed     int `json:"failures_sent_proposed"`     // …under the proposed one
	SuccessesBlockedProposed int `json:"successes_blocked_proposed"` // successes the proposed policy would have rejected
	Unknown                  int `json:"unknown"`                    // recorded rejections: their outcome is unknown
}
