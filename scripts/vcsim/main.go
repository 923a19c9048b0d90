// heron-vcsim: the stand-in for a VMware ESXi host's vSphere API in Heron's tests.
//
// No VMware can run on Heron's machines; govmomi's vCenter simulator package (Debian's
// golang-github-vmware-govmomi-dev) answers the same SOAP API and serves datastore files
// over /folder/. This program starts it as an ESXi host with no VM of its own, over HTTPS
// with the certificate it is given, on the address it is given, and prints one JSON line
// (its URL) once it listens. The tests add a datastore backed by their own folder
// (HostDatastoreSystem.CreateLocalDatastore) and register their VMs through the API.
// Changed-block tracking and a guest that writes while its VM runs are added (cbt.go).
// It is a stand-in: only what docs/v2v.md lists as checked against it is known to work.
package main

import (
	"crypto/tls"
	"encoding/json"
	"flag"
	"log"
	"net/url"
	"os"
	"os/signal"
	"syscall"

	"github.com/vmware/govmomi/simulator"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	certFile := flag.String("cert", "", "PEM certificate served (required)")
	keyFile := flag.String("key", "", "PEM private key of -cert (required)")
	user := flag.String("user", "root", "user name accepted")
	password := flag.String("password", "", "password accepted (required)")
	flag.Parse()
	if *certFile == "" || *keyFile == "" || *password == "" {
		log.Fatal("heron-vcsim: -cert, -key and -password are required")
	}
	pair, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		log.Fatalf("heron-vcsim: %v", err)
	}

	model := simulator.ESX()
	model.Machine = 0
	model.Autostart = false
	if err := model.Create(); err != nil {
		log.Fatalf("heron-vcsim: %v", err)
	}
	defer model.Remove()
	changes := newCbt()
	simulator.Map.AddHandler(changes)
	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*user, *password)}
	model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
	server := model.Service.NewServer()
	defer server.Close()
	// Set before the URL is printed, so before any client can connect.
	server.Server.Config.Handler = changes.handler(server.Server.Config.Handler)

	shown := *server.URL
	shown.User = nil
	line, _ := json.Marshal(map[string]string{"url": shown.String()})
	os.Stdout.Write(append(line, '\n'))

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
