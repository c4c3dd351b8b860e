package bootclock

import (
	"testing"
	"time"
)

// Wall is the wall clock's time for a boot timestamp, whichever the wall
// clock says now: a step of the wall clock (here, of the offset, as a step
// would change it) is followed once events are a second past the sample.
func TestWallFollowsASteppedClock(t *testing.T) {
	c := New()
	before := time.Now()
	got := c.Wall(Now())
	if d := got.Sub(before); d < -time.Second || d > time.Minute {
		t.Fatalf("Wall(now) = %v, %v from time.Now()", got, d)
	}
	// The wall clock stepped an hour ahead: what the next sample sees.
	c.s.offset.Add(-int64(time.Hour)) // the last sample is an hour stale
	boot := c.s.lastBoot.Load()
	if w := c.Wall(boot + resyncEvery/2); time.Since(w) < 59*time.Minute {
		t.Errorf("within a second of the sample: %v, want the sampled (stale) offset kept", w)
	}
	if w := c.Wall(boot + 2*resyncEvery); time.Since(w) > time.Minute {
		t.Errorf("a second past the sample: %v, %v behind the wall clock; want the offset sampled again", w, time.Since(w))
	}
	// Copies share the offset.
	cp := c
	c.s.offset.Add(-int64(time.Hour))
	cp.Sync()
	if w := c.Wall(c.s.lastBoot.Load()); time.Since(w) > time.Minute {
		t.Errorf("Sync on a copy did not reach the original: %v", w)
	}
	var zero Clock
	if w := zero.Wall(5); w != time.Unix(0, 5) {
		t.Errorf("zero Clock: %v", w)
	}
}
