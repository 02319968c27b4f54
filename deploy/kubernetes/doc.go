// Package kubernetes holds the Kubernetes manifests of kvroute (the YAML files beside
// this file; README.md gives the apply order) and the tests that keep them honest: every
// document decodes strictly into a known Kubernetes API type, the Role grants exactly
// get, list and watch on pods, the RoleBinding ties that Role to the Deployment's
// service account, and the ConfigMap's kvroute.yaml passes configs.Load with
// discovery.kubernetes on. The package has no code of its own.
package kubernetes
