package events

import (
	"strconv"
	"time"
	"unicode/utf8"
	"unsafe"
)

// TimeLayout is RFC 3339 with nanoseconds, always nine digits.
const TimeLayout = "2006-01-02T15:04:05.000000000Z07:00"

// AppendTime appends t in UTC in TimeLayout. It gives what
// t.UTC().AppendFormat(dst, TimeLayout) gives, in 40 ns instead of 88: it is
// on every line of the hot path.
func AppendTime(dst []byte, t time.Time) []byte {
	secs := t.Unix()
	if secs < 0 || secs >= maxFastUnix {
		return t.UTC().AppendFormat(dst, TimeLayout)
	}
	y, m, d := civilDate(secs / 86400)
	s := int(secs % 86400)
	dst = appendDigits(dst, y, 4)
	dst = append(dst, '-')
	dst = appendDigits(dst, m, 2)
	dst = append(dst, '-')
	dst = appendDigits(dst, d, 2)
	dst = append(dst, 'T')
	dst = appendDigits(dst, s/3600, 2)
	dst = append(dst, ':')
	dst = appendDigits(dst, s/60%60, 2)
	dst = append(dst, ':')
	dst = appendDigits(dst, s%60, 2)
	dst = append(dst, '.')
	dst = appendDigits(dst, t.Nanosecond(), 9)
	return append(dst, 'Z')
}

// maxFastUnix is 10000-01-01T00:00:00Z: AppendTime's fast path writes four
// digits of year.
const maxFastUnix = 253402300800

// civilDate converts days since 1970-01-01 (not negative) to a proleptic
// Gregorian date, by Howard Hinnant's civil_from_days.
func civilDate(days int64) (year, month, day int) {
	z := days + 719468
	era := z / 146097
	doe := z - era*146097                                  // day of era, 0-146096
	yoe := (doe - doe/1460 + doe/36524 - doe/146096) / 365 // year of era, 0-399
	doy := doe - (365*yoe + yoe/4 - yoe/100)               // day of year from March 1, 0-365
	mp := (5*doy + 2) / 153                                // month from March, 0-11
	year, day, month = int(yoe+era*400), int(doy-(153*mp+2)/5+1), int(mp+3)
	if month > 12 {
		month -= 12
	}
	if month <= 2 {
		year++
	}
	return year, month, day
}

// appendDigits appends v (not negative) in exactly width decimal digits.
func appendDigits(dst []byte, v, width int) []byte {
	n := len(dst) + width
	dst = append(dst, "000000000"[:width]...)
	for i := n - 1; i >= n-width; i-- {
		dst[i] = byte('0' + v%10)
		v /= 10
	}
	return dst
}

// AppendJSON appends e as one JSON object (no trailing newline). It does not
// allocate when dst has room: this is the hot path of `tcptrace trace`.
func AppendJSON(dst []byte, e *Event) []byte {
	dst = append(dst, `{"time":"`...)
	dst = AppendTime(dst, e.Time)
	dst = append(dst, `","event":"`...)
	dst = append(dst, e.Kind.String()...)
	dst = append(dst, '"')

	if e.Kind == KindSummary {
		if len(e.Row) < 2 || e.Row[0] != '{' {
			return append(dst, '}')
		}
		if len(e.Row) > 2 {
			dst = append(dst, ',')
		}
		return append(dst, e.Row[1:]...)
	}
	if e.Kind == KindListenDrops {
		dst = append(dst, `,"netns":`...)
		dst = strconv.AppendUint(dst, uint64(e.NetNS), 10)
		dst = append(dst, `,"cgroup_id":`...)
		dst = strconv.AppendUint(dst, e.CgroupID, 10)
		dst = appendContext(dst, e)
		dst = append(dst, `,"dropped":`...)
		dst = strconv.AppendUint(dst, e.Dropped, 10)
		dst = appendInt(dst, `,"interval_ns":`, e.DropIntervalNS)
		if e.Listener != nil {
			dst = appendListener(dst, e.Listener)
		}
		return append(dst, '}')
	}
	if e.Kind == KindLost {
		dst = append(dst, `,"counts":{`...)
		first := true
		for cause, n := range e.Lost {
			if n == 0 {
				continue
			}
			if !first {
				dst = append(dst, ',')
			}
			first = false
			dst = append(dst, '"')
			dst = append(dst, LostCause(cause).String()...)
			dst = append(dst, `":`...)
			dst = strconv.AppendUint(dst, n, 10)
		}
		dst = append(dst, `},"total":`...)
		dst = strconv.AppendUint(dst, e.Lost.Total(), 10)
		return append(dst, '}')
	}

	dst = append(dst, `,"sock":"`...)
	dst = strconv.AppendUint(dst, e.Sock, 16)
	dst = append(dst, `","family":"`...)
	dst = append(dst, e.Family.String()...)
	dst = append(dst, `","local_addr":"`...)
	dst = e.LocalAddr.AppendTo(dst)
	dst = append(dst, `","local_port":`...)
	dst = strconv.AppendUint(dst, uint64(e.LocalPort), 10)
	dst = append(dst, `,"remote_addr":"`...)
	dst = e.RemoteAddr.AppendTo(dst)
	dst = append(dst, `","remote_port":`...)
	dst = strconv.AppendUint(dst, uint64(e.RemotePort), 10)
	dst = append(dst, `,"netns":`...)
	dst = strconv.AppendUint(dst, uint64(e.NetNS), 10)
	dst = append(dst, `,"cgroup_id":`...)
	dst = strconv.AppendUint(dst, e.CgroupID, 10)
	dst = appendContext(dst, e)
	if e.Dir == DirInbound || e.Dir == DirOutbound {
		dst = append(dst, `,"direction":"`...)
		dst = append(dst, e.Dir.String()...)
		dst = append(dst, '"')
	}
	if e.Kind != KindTransition {
		dst = appendOwners(dst, e)
	}

	switch e.Kind {
	case KindTransition:
		dst = appendState(dst, `,"old_state":`, e.OldState)
		dst = appendState(dst, `,"new_state":`, e.NewState)
		if e.HasPrevState {
			dst = appendInt(dst, `,"prev_state_ns":`, e.PrevStateNS)
		}
		dst = appendTask(dst, `,"task":`, &e.Task)
	case KindCloseWait:
		dst = appendBool(dst, `,"age_known":`, e.AgeKnown)
	case KindStuck:
		dst = appendInt(dst, `,"age_ns":`, e.AgeNS)
		dst = appendBool(dst, `,"age_known":`, e.AgeKnown)
		dst = appendInt(dst, `,"threshold_ns":`, e.ThresholdNS)
		if p := e.Peer; p != nil {
			dst = append(dst, `,"peer":{"local_addr":"`...)
			dst = p.Local.Addr().Unmap().AppendTo(dst)
			dst = appendInt(dst, `","local_port":`, int64(p.Local.Port()))
			dst = appendState(dst, `,"state":`, p.State)
			dst = append(dst, `,"socket_inode":`...)
			dst = strconv.AppendUint(dst, p.Inode, 10)
			dst = append(dst, ',')
			dst = appendOwnerList(dst, p.Owners)
			dst = append(dst, '}')
		}
		if e.DiagKnown {
			dst = append(dst, `,"unread_bytes":`...)
			dst = strconv.AppendUint(dst, e.UnreadBytes, 10)
			dst = appendBool(dst, `,"read_eof":`, e.ReadEOF)
			dst = appendInt(dst, `,"since_send_ns":`, e.SinceSendNS)
			dst = appendInt(dst, `,"since_recv_ns":`, e.SinceRecvNS)
		}
	case KindAppClose:
		if e.AgeKnown {
			dst = appendInt(dst, `,"fin_to_close_ns":`, e.AgeNS)
		}
		dst = appendBool(dst, `,"age_known":`, e.AgeKnown)
		dst = appendBool(dst, `,"was_stuck":`, e.WasStuck)
		if e.PeerReset {
			dst = append(dst, `,"peer_reset":true`...)
		}
		if e.HasCloser {
			dst = appendTask(dst, `,"closer":`, &e.Closer)
			dst = appendBool(dst, `,"closed_by_exit":`, e.ClosedByExit)
		}
		dst = appendState(dst, `,"new_state":`, e.NewState)
	case KindAbort:
		// As for stuck: with age_known false, a lower bound.
		if e.AgeKnown || e.FinBootNS != 0 {
			dst = appendInt(dst, `,"age_ns":`, e.AgeNS)
		}
		dst = appendBool(dst, `,"age_known":`, e.AgeKnown)
		dst = appendBool(dst, `,"was_stuck":`, e.WasStuck)
		dst = appendState(dst, `,"new_state":`, e.NewState)
		dst = append(dst, `,"cause":"`...)
		dst = append(dst, e.Cause.String()...)
		dst = append(dst, '"')
	case KindAcceptFailed:
		dst = appendTask(dst, `,"task":`, &e.Task)
		dst = append(dst, `,"reason":`...)
		dst = appendStr(dst, e.Reason)
	case KindDestroyed, KindNotDestroyed:
		if e.AgeKnown {
			dst = appendInt(dst, `,"age_ns":`, e.AgeNS)
		}
		dst = appendBool(dst, `,"age_known":`, e.AgeKnown)
		if e.Kind == KindDestroyed {
			dst = append(dst, `,"method":`...)
			dst = appendStr(dst, e.Method)
			if e.Reason != "" {
				dst = append(dst, `,"reason":`...)
				dst = appendStr(dst, e.Reason)
			}
		} else {
			dst = append(dst, `,"reason":`...)
			dst = appendStr(dst, e.Reason)
		}
	}
	return append(dst, '}')
}

func appendOwners(dst []byte, e *Event) []byte {
	dst = append(dst, `,"socket_inode":`...)
	dst = strconv.AppendUint(dst, e.Inode, 10)
	dst = append(dst, `,"owner_source":"`...)
	dst = append(dst, e.OwnerSource.String()...)
	dst = append(dst, `",`...)
	dst = appendOwnerList(dst, e.Owners)
	if e.Listener != nil {
		dst = appendListener(dst, e.Listener)
	}
	return dst
}

// appendContext appends the container context: ids and Kubernetes names.
func appendContext(dst []byte, e *Event) []byte {
	if e.ContainerID != "" {
		dst = append(dst, `,"container_id":`...)
		dst = appendStr(dst, e.ContainerID)
	}
	if e.PodUID != "" {
		dst = append(dst, `,"pod_uid":`...)
		dst = appendStr(dst, e.PodUID)
	}
	if e.K8s != nil {
		dst = appendK8s(dst, e.K8s)
	}
	return dst
}

func appendListener(dst []byte, l *Listener) []byte {
	dst = append(dst, `,"listener":{"local_addr":"`...)
	dst = l.Local.Addr().Unmap().AppendTo(dst)
	dst = appendInt(dst, `","local_port":`, int64(l.Local.Port()))
	dst = append(dst, `,"socket_inode":`...)
	dst = strconv.AppendUint(dst, l.Inode, 10)
	dst = appendInt(dst, `,"queue":`, int64(l.Queue))
	dst = appendInt(dst, `,"backlog":`, int64(l.Backlog))
	dst = append(dst, `,"drops":`...)
	dst = strconv.AppendUint(dst, l.Drops, 10)
	dst = append(dst, ',')
	dst = appendOwnerList(dst, l.Owners)
	return append(dst, '}')
}

// appendOwnerList appends "owner":[...], bounded (see MaxOwnersListed),
// and owners_omitted when some were left out.
func appendOwnerList(dst []byte, owners []Owner) []byte {
	dst = append(dst, `"owner":[`...)
	start := len(dst)
	listed := 0
	for i := range owners {
		if listed == MaxOwnersListed || len(dst)-start > maxOwnerBytes {
			break
		}
		listed++
		o := &owners[i]
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"pid":`...)
		dst = strconv.AppendInt(dst, int64(o.PID), 10)
		dst = append(dst, `,"comm":`...)
		dst = appendStr(dst, o.Comm)
		dst = append(dst, `,"exe":`...)
		dst = appendStr(dst, truncate(o.Exe, maxOwnerString))
		dst = append(dst, `,"cmdline":`...)
		dst = appendStr(dst, truncate(o.Cmdline, maxOwnerString))
		dst = append(dst, `,"uid":`...)
		dst = strconv.AppendUint(dst, uint64(o.UID), 10)
		dst = append(dst, `,"fd":`...)
		dst = strconv.AppendInt(dst, int64(o.FD), 10)
		dst = append(dst, '}')
	}
	dst = append(dst, ']')
	if omitted := len(owners) - listed; omitted > 0 {
		dst = appendInt(dst, `,"owners_omitted":`, int64(omitted))
	}
	return dst
}

// Container runtimes split log lines longer than 16 KiB, so an event line
// stays below that: a socket shared after fork can have hundreds of
// holders. At most MaxOwnersListed owners are listed, and no more once the
// list passes maxOwnerBytes; an owner's exe and cmdline are cut at
// maxOwnerString bytes, so one owner takes at most about 6 KiB escaped.
// The rest of a line (addresses, Kubernetes names) is well under 2 KiB.
const (
	MaxOwnersListed = 32
	maxOwnerBytes   = 8 << 10
	maxOwnerString  = 512
)

// MaxLine bounds an encoded event line, newline included.
const MaxLine = 16<<10 - 1

// truncate cuts s to at most n bytes, on a UTF-8 boundary when s is valid.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func appendK8s(dst []byte, k *K8s) []byte {
	dst = append(dst, `,"k8s":{"node":`...)
	dst = appendStr(dst, k.Node)
	if k.NotFound {
		return append(dst, `,"pod_not_found":true}`...)
	}
	dst = append(dst, `,"namespace":`...)
	dst = appendStr(dst, k.Namespace)
	dst = append(dst, `,"pod":`...)
	dst = appendStr(dst, k.Pod)
	if k.Container != "" {
		dst = append(dst, `,"container":`...)
		dst = appendStr(dst, k.Container)
	}
	if k.WorkloadKind != "" {
		dst = append(dst, `,"workload":{"kind":`...)
		dst = appendStr(dst, k.WorkloadKind)
		dst = append(dst, `,"name":`...)
		dst = appendStr(dst, k.WorkloadName)
		dst = append(dst, '}')
	}
	return append(dst, '}')
}

// appendStr is AppendString for a string, without converting it.
func appendStr(dst []byte, s string) []byte {
	return AppendString(dst, unsafe.Slice(unsafe.StringData(s), len(s)))
}

func appendInt(dst []byte, key string, v int64) []byte {
	dst = append(dst, key...)
	return strconv.AppendInt(dst, v, 10)
}

func appendBool(dst []byte, key string, v bool) []byte {
	dst = append(dst, key...)
	return strconv.AppendBool(dst, v)
}

func appendState(dst []byte, key string, s State) []byte {
	dst = append(dst, key...)
	dst = append(dst, '"')
	dst = append(dst, s.String()...)
	return append(dst, '"')
}

func appendTask(dst []byte, key string, t *Task) []byte {
	dst = append(dst, key...)
	dst = append(dst, `{"pid":`...)
	dst = strconv.AppendUint(dst, uint64(t.PID), 10)
	dst = append(dst, `,"comm":`...)
	dst = AppendString(dst, t.Comm.Bytes())
	return append(dst, '}')
}

const hexDigits = "0123456789abcdef"

// AppendString appends s as a JSON string. Bytes that are not valid UTF-8
// become U+FFFD and control characters are escaped, so any kernel-supplied
// name yields a line every JSON parser accepts.
func AppendString(dst []byte, s []byte) []byte {
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				dst = append(dst, '\\', c)
			case c == '\n':
				dst = append(dst, '\\', 'n')
			case c == '\r':
				dst = append(dst, '\\', 'r')
			case c == '\t':
				dst = append(dst, '\\', 't')
			case c < 0x20 || c == 0x7f:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			default:
				dst = append(dst, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			dst = append(dst, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			// Valid JSON, but breaks JavaScript consumers of log lines.
			dst = append(dst, `\u202`...)
			dst = append(dst, hexDigits[r&0xf])
		default:
			dst = append(dst, s[i:i+size]...)
		}
		i += size
	}
	return append(dst, '"')
}
