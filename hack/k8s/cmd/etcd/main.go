// Command etcd is the etcd server at the version k8s.io/kubernetes pins in its go.mod,
// built here because Debian's and PyPI's etcd are older than Kubernetes supports.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
