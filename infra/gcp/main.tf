# A GKE cluster with a CPU pool (API, Flower, KEDA) and an autoscaled GPU pool for the workers.
# The manifests in infra/k8s run here unchanged: KEDA scales the worker Deployment on queue depth,
# and the cluster autoscaler adds or removes GPU nodes for the pods it creates or deletes.

resource "google_service_account" "workload" {
  account_id   = "${var.cluster_name}-workload"
  display_name = "biofleet API and workers"
}

resource "google_service_account" "nodes" {
  account_id   = "${var.cluster_name}-nodes"
  display_name = "biofleet GKE nodes"
}

resource "google_project_iam_member" "nodes_logging" {
  for_each = toset(["roles/logging.logWriter", "roles/monitoring.metricWriter", "roles/artifactregistry.reader"])
  project  = var.project_id
  role     = each.value
  member   = "serviceAccount:${google_service_account.nodes.email}"
}

resource "google_container_cluster" "biofleet" {
  name     = var.cluster_name
  location = var.region

  node_locations           = var.gpu_zones
  remove_default_node_pool = true
  initial_node_count       = 1
  deletion_protection      = true

  release_channel {
    channel = "REGULAR"
  }

  workload_identity_config {
    workload_pool = "${var.project_id}.svc.id.goog"
  }

  network_policy {
    enabled = true # the Flower NetworkPolicy in infra/k8s
  }
}

resource "google_container_node_pool" "system" {
  name       = "system"
  cluster    = google_container_cluster.biofleet.id
  node_count = 1 # per zone

  node_config {
    machine_type    = var.system_machine_type
    service_account = google_service_account.nodes.email
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
  }
}

resource "google_container_node_pool" "gpu" {
  name    = "gpu"
  cluster = google_container_cluster.biofleet.id

  autoscaling {
    # Totals over all zones. The floor comes from the ScaledObject (2 workers), not from here:
    # the cluster autoscaler keeps as many nodes as there are worker pods to place.
    total_min_node_count = 0
    total_max_node_count = var.max_gpu_nodes
    location_policy      = "ANY" # take GPUs in whichever zone has them
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  upgrade_settings {
    max_surge       = 1
    max_unavailable = 0
  }

  node_config {
    machine_type    = var.machine_type
    spot            = var.spot
    disk_size_gb    = 100
    disk_type       = "pd-balanced"
    service_account = google_service_account.nodes.email
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]

    guest_accelerator {
      type  = var.gpu_type
      count = var.gpu_count
      gpu_driver_installation_config {
        gpu_driver_version = "LATEST"
      }
    }

    # The worker Deployment selects this label; GKE itself taints GPU nodes with
    # nvidia.com/gpu=present:NoSchedule, which the worker tolerates.
    labels = {
      "biofleet.io/pool" = "gpu"
    }

    workload_metadata_config {
      mode = "GKE_METADATA"
    }
  }
}

# Image blobs. biofleet's S3 client reaches Cloud Storage through its S3-compatible XML API
# (AWS_ENDPOINT_URL_S3=https://storage.googleapis.com and an HMAC key: infra/README.md).
resource "google_storage_bucket" "blobs" {
  name                        = "${var.project_id}-${var.cluster_name}-images"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  lifecycle_rule {
    condition {
      age = var.retention_days
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      age = 1
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }
}

resource "google_storage_bucket_iam_member" "workload_objects" {
  bucket = google_storage_bucket.blobs.name
  role   = "roles/storage.objectUser"
  member = "serviceAccount:${google_service_account.workload.email}"
}

# The Kubernetes ServiceAccount biofleet/biofleet acts as the workload service account.
resource "google_service_account_iam_member" "workload_identity" {
  service_account_id = google_service_account.workload.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project_id}.svc.id.goog[biofleet/biofleet]"
}
