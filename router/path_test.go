package router

import "testing"

func TestPrefixPrecedence(t *testing.T) {
	t.Parallel()
	tbl := mustNew(t, siteOf([]string{"example.com"},
		say("/", "root"),
		say("/api", "api"),
		say("/api/v1/", "v1"),
		say("/docs/", "docs"),
		say("/docs", "docs-second"), // same segments as "/docs/": first listed wins
		say("/a/b/c", "abc"),
		say("/a", "a"),
		say("/a/b/", "ab"),
	))
	tests := []struct{ path, want string }{
		{"/", "root"},
		{"", "root"},
		{"/other", "root"},
		{"/api", "api"},
		{"/api/", "api"},
		{"/api/x", "api"},
		{"/apix", "root"},
		{"/api/v1", "v1"},
		{"/api/v1/", "v1"},
		{"/api/v1/users", "v1"},
		{"/api/v10", "api"},
		{"/docs", "docs"},
		{"/docs/", "docs"},
		{"/docs/x", "docs"},
		{"/docsx", "root"},
		{"/a", "a"},
		{"/a/b", "ab"},
		{"/a/b/c", "abc"},
		{"/a/b/c/d", "abc"},
		{"/a/b/cd", "ab"},
		{"/A", "root"}, // paths are case-sensitive
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			t.Parallel()
			if got := tag(tbl.Match("example.com", tt.path)); got != tt.want {
				t.Errorf("Match(%q) = %s, want %s", tt.path, got, tt.want)
			}
		})
	}
}

func TestPrefixNoFallback(t *testing.T) {
	t.Parallel()
	tbl := mustNew(t, siteOf([]string{"example.com"},
		say("/api/", "api"),
		say("/api", "api-second"),
	))
	tests := []struct{ path, want string }{
		{"/api", "api"},
		{"/api/", "api"},
		{"/api/x", "api"},
		{"/apix", "<nil>"},
		{"/", "<nil>"},
		{"/ap", "<nil>"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			t.Parallel()
			if got := tag(tbl.Match("example.com", tt.path)); got != tt.want {
				t.Errorf("Match(%q) = %s, want %s", tt.path, got, tt.want)
			}
		})
	}
}

func TestRouteNames(t *testing.T) {
	t.Parallel()
	tbl := mustNew(t, siteOf([]string{"Example.com", "www.example.com"},
		say("", "root"), // Load defaults the path to "/"; New does too
		proxied("/api/", "api", false),
	))
	tests := []struct{ path, name, upstream string }{
		{"/", "example.com/", ""},
		{"/api/x", "example.com/api/", "api"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			t.Parallel()
			rt := tbl.Match("example.com", tt.path)
			if rt == nil {
				t.Fatal("no route")
			}
			if rt.Name != tt.name || rt.Upstream != tt.upstream {
				t.Errorf("Name, Upstream = %q, %q; want %q, %q", rt.Name, rt.Upstream, tt.name, tt.upstream)
			}
		})
	}
}

func TestCleanPath(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"/", "/", true},
		{"/a/b", "/a/b", true},
		{"/a/b/", "/a/b/", true},
		{"//", "/", true},
		{"/a//b", "/a/b", true},
		{"/a//b//", "/a/b/", true},
		{"/a/./b", "/a/b", true},
		{"/a//b/./c", "/a/b/c", true},
		{"/a/b/../c", "/a/c", true},
		{"/a/b/..", "/a/", true},
		{"/a/.", "/a/", true},
		{"/a/..", "/", true},
		{"/.", "/", true},
		{"/./", "/", true},
		{"/...", "/...", true},
		{"/a/..b/.c", "/a/..b/.c", true},
		{"/..", "", false},
		{"/../etc", "", false},
		{"/a/../../b", "", false},
		{"/a/b/../../..", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			got, ok := cleanPath(tt.in)
			if got != tt.want || ok != tt.ok {
				t.Errorf("cleanPath(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
			}
			if ok && !isClean(got) {
				t.Errorf("cleanPath(%q) = %q is not clean", tt.in, got)
			}
		})
	}
}
