package manager

import (
	"embed"
	"io/fs"
	"net/http"
)

// The dashboard: a static page (HTML, CSS, JavaScript; no build step, nothing
// fetched from elsewhere) embedded in the binary and served at /ui/. The page
// itself carries no cluster data, so it is served without the API token; its
// script reads the token from the URL fragment (#token=..., which browsers
// never send to the server), keeps it in sessionStorage and calls the /v1 API
// with it like any other client.
//
//go:embed ui
var uiFiles embed.FS

// UIPath is where the manager serves the dashboard.
const UIPath = "/ui/"

// uiCSP allows the page only its own scripts, styles and API: no inline
// script, nothing from another origin, no framing.
const uiCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// withUI serves the dashboard's static files at /ui/ and redirects / there;
// every other request goes to api, which checks the token. Only GET and
// HEAD of /ui/ bypass the token, and they reach nothing but the embedded
// files.
func (m *Manager) withUI(api http.Handler) http.Handler {
	sub, err := fs.Sub(uiFiles, "ui")
	if err != nil {
		panic(err) // the embedded tree always holds ui/
	}
	files := http.StripPrefix(UIPath, http.FileServerFS(sub))
	mux := http.NewServeMux()
	mux.Handle("GET "+UIPath, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", uiCSP)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	}))
	mux.Handle("GET /{$}", http.RedirectHandler(UIPath, http.StatusFound))
	mux.Handle("/", api)
	return mux
}
