package cgroup

import (
	"maps"
	"os"
	"strings"
	"testing"
)

func TestParseProcCgroup(t *testing.T) {
	tests := []struct {
		name   string
		data   string
		wantV2 string
		wantV1 map[string]string
	}{
		{"unified", "0::/system.slice/docker-" + id1 + ".scope\n", "/system.slice/docker-" + id1 + ".scope", map[string]string{}},
		{"unified no trailing newline", "0::/init.scope", "/init.scope", map[string]string{}},
		{"dead cgroup", "0::/system.slice/docker-" + id1 + ".scope (deleted)\n", "/system.slice/docker-" + id1 + ".scope (deleted)", map[string]string{}},
		{"cgroupns outside view", "0::/../../system.slice/sshd.service\n", "/../../system.slice/sshd.service", map[string]string{}},
		{
			"hybrid",
			"12:cpu,cpuacct:/docker/" + id1 + "\n" +
				"11:memory:/docker/" + id1 + "\n" +
				"1:name=systemd:/docker/" + id1 + "\n" +
				"0::/system.slice/docker-" + id1 + ".scope\n",
			"/system.slice/docker-" + id1 + ".scope",
			map[string]string{
				"cpu":          "/docker/" + id1,
				"cpuacct":      "/docker/" + id1,
				"memory":       "/docker/" + id1,
				"name=systemd": "/docker/" + id1,
			},
		},
		{
			"legacy v1 only, colon in path",
			"11:devices:/system.slice/containerd.service/kubepods-pod" + uidEsc + ".slice:cri-containerd:" + id1 + "\n" +
				"4:net_cls,net_prio:/\n",
			"",
			map[string]string{
				"devices":  "/system.slice/containerd.service/kubepods-pod" + uidEsc + ".slice:cri-containerd:" + id1,
				"net_cls":  "/",
				"net_prio": "/",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v2, v1, err := ParseProcCgroup([]byte(tt.data))
			if err != nil {
				t.Fatal(err)
			}
			if v2 != tt.wantV2 {
				t.Errorf("v2 = %q, want %q", v2, tt.wantV2)
			}
			if !maps.Equal(v1, tt.wantV1) || v1 == nil {
				t.Errorf("v1 = %v, want %v", v1, tt.wantV1)
			}
		})
	}
}

func TestParseProcCgroupErrors(t *testing.T) {
	tests := []struct{ name, data string }{
		{"empty", ""},
		{"only newlines", "\n\n"},
		{"no colons", "garbage\n"},
		{"one colon", "0:/\n"},
		{"bad id", "x::/\n"},
		{"negative id", "-1:cpu:/\n"},
		{"relative path", "0::system.slice\n"},
		{"empty path", "0::\n"},
		{"controllers on v2", "0:cpu:/\n"},
		{"two v2 lines", "0::/\n0::/init.scope\n"},
		{"v1 without controllers", "3::/\n"},
		{"empty controller", "3:cpu,,memory:/\n"},
		{"controller twice", "3:cpu:/\n4:cpu:/\n"},
		{"nul in path", "0::/docker\x00/x\n"},
		{"carriage return", "0::/\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v2, v1, err := ParseProcCgroup([]byte(tt.data))
			if err == nil {
				t.Fatalf("no error; v2 %q, v1 %v", v2, v1)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
		})
	}
}

func TestContextFromProc(t *testing.T) {
	podPath := "/kubepods/besteffort/pod" + uid
	tests := []struct {
		name string
		data string
		want Context
	}{
		{"v2 docker", "0::/system.slice/docker-" + id1 + ".scope\n", Context{ContainerID: id1, Runtime: "docker"}},
		{"host process", "12:cpu,cpuacct:/user.slice\n1:name=systemd:/user.slice/user-1000.slice/session-3.scope\n0::/user.slice/user-1000.slice/session-3.scope\n", Context{}},
		{
			// systemd tracks the container only in name=systemd.
			"v1 lines disagree",
			"12:memory:/\n" +
				"1:name=systemd:/system.slice/docker-" + id1 + ".scope\n" +
				"0::/\n",
			Context{ContainerID: id1, Runtime: "docker"},
		},
		{
			"container beats pod only",
			"12:memory:" + podPath + "\n" +
				"11:cpu:" + podPath + "/" + id1 + "\n" +
				"0::/\n",
			Context{ContainerID: id1, PodUID: uid},
		},
		{
			"v2 wins a tie",
			"12:memory:/docker/" + id2 + "\n" +
				"0::/system.slice/docker-" + id1 + ".scope\n",
			Context{ContainerID: id1, Runtime: "docker"},
		},
		{
			"first v1 line wins a tie",
			"12:memory:/docker/" + id2 + "\n" +
				"11:cpu:/docker/" + id1 + "\n",
			Context{ContainerID: id2, Runtime: "docker"},
		},
		{"malformed", "0::/docker/" + id1 + "\ngarbage\n", Context{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ContextFromProc([]byte(tt.data)); got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestParseProcCgroupSelf parses this process's own file, whatever the host.
func TestParseProcCgroupSelf(t *testing.T) {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Skip(err)
	}
	v2, v1, err := ParseProcCgroup(data)
	if err != nil {
		t.Fatalf("%v in %q", err, data)
	}
	if v2 == "" && len(v1) == 0 {
		t.Errorf("nothing parsed from %q", data)
	}
	checkContext(t, data, ContextFromProc(data))
}

func FuzzParseProcCgroup(f *testing.F) {
	f.Add([]byte("0::/system.slice/docker-" + id1 + ".scope\n"))
	f.Add([]byte("12:cpu,cpuacct:/kubepods/burstable/pod" + uid + "/" + id1 + "\n1:name=systemd:/\n0::/\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		v2, v1, err := ParseProcCgroup(data)
		if err != nil {
			if v2 != "" || v1 != nil {
				t.Errorf("%q: results with error %v", data, err)
			}
		} else {
			if v2 != "" && !strings.HasPrefix(v2, "/") {
				t.Errorf("%q: v2 path %q", data, v2)
			}
			for c, p := range v1 {
				if c == "" || !strings.HasPrefix(p, "/") {
					t.Errorf("%q: v1 %q: %q", data, c, p)
				}
			}
		}
		c := ContextFromProc(data)
		checkContext(t, data, c)
		if err != nil && c != (Context{}) {
			t.Errorf("%q: context %+v from malformed content", data, c)
		}
	})
}
