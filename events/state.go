package events

import "strconv"

// State is a TCP state numbered as in the kernel (include/net/tcp_states.h).
type State uint8

const (
	StateEstablished State = iota + 1
	StateSynSent
	StateSynRecv
	StateFinWait1
	StateFinWait2
	StateTimeWait
	StateClose
	StateCloseWait
	StateLastAck
	StateListen
	StateClosing
	StateNewSynRecv
	StateBoundInactive
)

var stateNames = [...]string{
	StateEstablished:   "ESTABLISHED",
	StateSynSent:       "SYN_SENT",
	StateSynRecv:       "SYN_RECV",
	StateFinWait1:      "FIN_WAIT1",
	StateFinWait2:      "FIN_WAIT2",
	StateTimeWait:      "TIME_WAIT",
	StateClose:         "CLOSE",
	StateCloseWait:     "CLOSE_WAIT",
	StateLastAck:       "LAST_ACK",
	StateListen:        "LISTEN",
	StateClosing:       "CLOSING",
	StateNewSynRecv:    "NEW_SYN_RECV",
	StateBoundInactive: "BOUND_INACTIVE",
}

// String returns the kernel's name without the TCP_ prefix, or UNKNOWN_<n>
// for a state this build does not know.
func (s State) String() string {
	if int(s) < len(stateNames) && stateNames[s] != "" {
		return stateNames[s]
	}
	return "UNKNOWN_" + strconv.Itoa(int(s))
}

// ParseState is the inverse of String for known states.
func ParseState(name string) (State, bool) {
	for i, n := range stateNames {
		if n != "" && n == name {
			return State(i), true
		}
	}
	return 0, false
}
