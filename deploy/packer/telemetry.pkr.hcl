# Amazon Machine Images for telemetry-core: one per role, both made by the same
# deploy/bootstrap.sh that the Dockerfiles and cloud-init run.
#
#   packer init deploy/packer
#   packer build -var role=edge -var s3_bucket=my-archive deploy/packer/telemetry.pkr.hcl
#   packer build -var role=mapreduce -var s3_bucket=my-archive deploy/packer/telemetry.pkr.hcl
#
# The node id is "auto" (host name + a short id kept in the data dir, made at
# first start), so one image serves many nodes; per-instance settings come
# from cloud-init (deploy/cloud-init/user-data.yaml). Secrets are never baked
# in: the config holds ${VAR} references, the instance role gives S3 access.
packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.3.0"
    }
  }
}

variable "role" {
  type        = string
  default     = "edge"
  description = "edge (edge + processor) or mapreduce (Spark jobs)"
  validation {
    condition     = contains(["edge", "mapreduce"], var.role)
    error_message = "The role must be edge or mapreduce."
  }
}

variable "region" {
  type    = string
  default = "us-west-2"
}

variable "instance_type" {
  type    = string
  default = "c6i.large"
}

variable "s3_bucket" {
  type        = string
  default     = ""
  description = "Archive bucket; empty = publish to the local archive"
}

variable "s3_prefix" {
  type    = string
  default = ""
}

variable "redis_url" {
  type        = string
  default     = ""
  description = "Shared dedup Redis (edge role); a password only as a reference: redis://:$${TELEMETRY_REDIS_PASSWORD}@host:6379/0"
}

variable "spark_master" {
  type    = string
  default = "local[*]"
}

locals {
  timestamp = regex_replace(timestamp(), "[- TZ:]", "")
  bootstrap_args = join(" ", compact([
    "--role ${var.role}",
    "--node-id auto",
    var.s3_bucket != "" ? "--s3-bucket ${var.s3_bucket}" : "",
    var.s3_prefix != "" ? "--s3-prefix ${var.s3_prefix}" : "",
    var.redis_url != "" ? "--redis-url '${var.redis_url}'" : "",
    var.role == "mapreduce" ? "--spark-master '${var.spark_master}'" : "",
  ]))
}

source "amazon-ebs" "telemetry" {
  region        = var.region
  instance_type = var.instance_type
  ami_name      = "telemetry-core-${var.role}-${local.timestamp}"
  ssh_username  = "admin"
  source_ami_filter {
    filters = {
      name                = "debian-12-amd64-*"
      virtualization-type = "hvm"
      root-device-type    = "ebs"
    }
    owners      = ["136693071363"] # Debian
    most_recent = true
  }
  launch_block_device_mappings {
    device_name           = "/dev/xvda"
    volume_size           = 20
    volume_type           = "gp3"
    delete_on_termination = true
  }
  tags = {
    Name = "telemetry-core-${var.role}"
    Role = var.role
  }
}

build {
  sources = ["source.amazon-ebs.telemetry"]

  provisioner "shell" {
    inline = ["sudo mkdir -p /opt/telemetry/src && sudo chown admin /opt/telemetry/src"]
  }

  # The working tree (setup.py, telemetry_core/, deploy/) goes to the image; the bootstrap installs from it.
  provisioner "file" {
    source      = "${path.root}/../../"
    destination = "/opt/telemetry/src"
  }

  provisioner "shell" {
    inline = [
      "sudo /opt/telemetry/src/deploy/bootstrap.sh ${local.bootstrap_args} --package /opt/telemetry/src",
      "sudo /opt/telemetry/venv/bin/telemetry config check --config /etc/telemetry/telemetry.yaml",
    ]
    environment_vars = ["TELEMETRY_REDIS_PASSWORD=packer-config-check-only"]
  }
}
