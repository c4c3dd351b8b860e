// Package pipeline is tcptrace's event loop: it takes events from a source
// (the tracer), correlates them in the CLOSE-WAIT tracker, attributes them
// to processes and containers, and hands them to sinks (the JSON/table
// writer; metrics and a live view plug in the same way).
//
// # Quiet by default
//
// On a healthy server nearly every socket leaves CLOSE-WAIT within
// milliseconds. By default the kernel sends no record for such a socket: it
// counts it in its aggregates (entered, closed, aborted, a FIN-to-close
// histogram, by socket cgroup, service port and direction) and keeps it in
// its CLOSE-WAIT table only while it is there. The pipeline learns of
// sockets that stay by scanning that table (Source.ScanCloseWait), which
// hands over each socket past the threshold once, every scan interval: a
// tenth of the threshold, at least 50 ms, and at least 50 times what the
// last read took (so that reading a table of 100,000 leaked sockets costs
// at most about 2 % of a CPU), at most 5 s. No scan runs while the
// aggregates count no socket in CLOSE-WAIT that the tracker lacks. A
// socket handed over joins the tracker and is reported stuck at the next
// progress mark, after a check that it is still in the table. So every
// socket in CLOSE-WAIT past the threshold is reported at most one scan
// interval plus one flush interval after it (plus the owner wait below).
//
// The kernel sends a record when a socket aborts, when it closes at least
// the threshold (or a lower latency floor) after its FIN, and when it did
// not fit the kernel table: user space then tracks it from the record. A
// stuck socket that closes therefore always sends its close, which finds
// its report in the tracker (was_stuck). When records were dropped, the
// whole table is read once, and a tracked socket missing from it whose
// close has not arrived by the next progress mark is dropped
// (Tracker.Recheck), not counted stuck for ever.
//
// # Never overtaking a close
//
// A socket's table entry is deleted before its close is reported, so a
// socket found in the table has not closed yet, and a stuck report is
// checked against the table (Source.InCloseWait) just before it goes out.
// Reports are made only at progress marks, which say that every record
// produced before them has been handled: a close still in the ring buffer
// is handled first.
//
// # Owners
//
// A stuck report names the processes that hold the socket, found in /proc.
// Scans are node-wide and budgeted (package owner). When the budget allows
// no scan yet, a first report is held back until it does, at most
// MaxOwnerWait (5 s by default) past its due time, rather than go out
// unresolved.
//
// # Sinks
//
// Sinks are called from the loop's goroutine, outside the tracker's lock:
// a reader of the tracker (a metrics scrape) never waits for a slow sink.
// Filter applies a Selection (event kinds, latency floor, owning process)
// to a sink. A sink that reports a broken pipe (EPIPE) ends the run
// cleanly, as a signal does.
package pipeline
